/* The reply batch.
 *
 * Replies to one wake-up's requests leave together: JS writes them into a batch area shared with
 * us (registered once with setReplyArena: bytes, and an Int32 index of [offset, length, fd] per
 * reply), then sendReplies(sock, count) sends them with one sendmmsg, each with its fd as
 * SCM_RIGHTS, and closes the broker's copy of every fd that went out. One call into C and one
 * syscall per wake-up instead of a send and a close per request. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/sockios.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "napi.h"
#include "parts.h"
#include "sockets.h"

#define REPLY_BATCH_MAX 64
static uint8_t *reply_arena;
static size_t reply_arena_len;
static int32_t *reply_meta;
static size_t reply_meta_len;
static napi_ref reply_arena_ref, reply_meta_ref;

static napi_value js_set_reply_arena(napi_env env, napi_callback_info info) {
  ARGS(2);
  uint8_t *a, *m;
  size_t al, ml;
  if (get_buffer(env, argv[0], &a, &al) || get_buffer(env, argv[1], &m, &ml) || ml < sizeof(int32_t) * 3) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "arena must be a Buffer, meta an Int32Array of at least 3");
    return NULL;
  }
  if (reply_arena_ref) napi_delete_reference(env, reply_arena_ref);
  if (reply_meta_ref) napi_delete_reference(env, reply_meta_ref);
  napi_create_reference(env, argv[0], 1, &reply_arena_ref);
  napi_create_reference(env, argv[1], 1, &reply_meta_ref);
  reply_arena = a, reply_arena_len = al, reply_meta = (int32_t *)m, reply_meta_len = ml / sizeof(int32_t);
  return NULL;
}

/* sendReplies(fd, count) -> how many replies went out (all of them, or fewer when the socket filled
 * up), -EAGAIN when not even the first could, or -errno. The fds of the replies that went out are
 * closed here; the caller keeps those of the others. For SOCK_SEQPACKET, where a message goes whole
 * or not at all. */
static napi_value js_send_replies(napi_env env, napi_callback_info info) {
  ARGS(2);
  INT_ARG(0, fd);
  INT_ARG(1, count);
  if (!reply_arena || count < 0 || count > REPLY_BATCH_MAX || (size_t)count * 3 > reply_meta_len) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "no reply arena, or too many replies");
    return NULL;
  }
  struct mmsghdr msgs[REPLY_BATCH_MAX];
  struct iovec iovs[REPLY_BATCH_MAX];
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } ctl[REPLY_BATCH_MAX];
  for (int i = 0; i < count; i++) {
    uint32_t off = (uint32_t)reply_meta[3 * i], len = (uint32_t)reply_meta[3 * i + 1];
    int pass = reply_meta[3 * i + 2];
    if ((size_t)off + len > reply_arena_len) {
      napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "a reply lies outside the arena");
      return NULL;
    }
    iovs[i] = (struct iovec){reply_arena + off, len};
    msgs[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &iovs[i], .msg_iovlen = 1}};
    if (pass >= 0) attach_fds(&msgs[i].msg_hdr, ctl[i].buf, &pass, 1);
  }
  int sent = 0;
  while (sent < count) {
    int n = sendmmsg(fd, msgs + sent, (unsigned)(count - sent), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (sent == 0) return make_int(env, -errno);
      break;
    }
    for (int i = sent; i < sent + n; i++)
      if (reply_meta[3 * i + 2] >= 0) close(reply_meta[3 * i + 2]);
    sent += n;
    if (n == 0) break;
  }
  return make_int(env, sent);
}

/* sendBufferSize(fd) -> SO_SNDBUF, or -errno; sendQueued(fd) -> SIOCOUTQ, which for a UNIX socket
 * counts the memory of sent messages that its peer has not read yet, or -errno. The broker batches a
 * wake-up's replies only when they surely fit in the difference, so that a client that never reads
 * cannot leave it holding more than one reply's fd. */
static napi_value js_send_buffer_size(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, fd);
  int sndbuf = 0;
  socklen_t len = sizeof sndbuf;
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) < 0) return make_int(env, -errno);
  return make_int(env, sndbuf);
}

static napi_value js_send_queued(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, fd);
  int queued = 0;
  if (ioctl(fd, SIOCOUTQ, &queued) < 0) return make_int(env, -errno);
  return make_int(env, queued);
}

napi_status replies_register(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
    {"setReplyArena", js_set_reply_arena},
    {"sendReplies", js_send_replies},
    {"sendBufferSize", js_send_buffer_size},
    {"sendQueued", js_send_queued},
  };
  return export_functions(env, exports, fns, COUNT(fns));
}
