/* The poller: a libuv poll watcher that calls into JS, the receive arena its receiving modes drain
 * messages into, and the bounded busy polling that follows a wake-up that served requests. They
 * share the process-wide arena and the main thread's loop, so they live together. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <uv.h>

#include "napi.h"
#include "parts.h"
#include "sockets.h"

/* ---- the receive arena ------------------------------------------------------------------------
 * Every poller in receive mode drains its socket into one arena shared with JS: a byte area and an
 * Int32 index of records [offset, length, msg_flags, nfds, fd...]. JS owns the memory (registered once
 * with setRecvArena) and must consume a batch before its callback returns; the event loop is single
 * threaded, so the next batch cannot overwrite it earlier. No allocation per message. */
static uint8_t *arena;
static size_t arena_len;
static int32_t *meta;
static size_t meta_len;
static napi_ref arena_ref, meta_ref;
static napi_env arena_env; /* the arena is process-wide: one JS thread (the first to load us) owns it */

static napi_value js_set_recv_arena(napi_env env, napi_callback_info info) {
  ARGS(2);
  if (arena_env && arena_env != env) {
    napi_throw_error(env, "ERR_OPENHOOK_THREAD", "the openhook addon serves sockets from one thread only; it is already loaded in another");
    return NULL;
  }
  uint8_t *a, *m;
  size_t al, ml;
  if (get_buffer(env, argv[0], &a, &al) || get_buffer(env, argv[1], &m, &ml) || al < 70000 ||
      ml < sizeof(int32_t) * (4 + MAX_FDS_PER_MSG) * 2) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "arena must be a Buffer >= 70000 bytes, meta an Int32Array >= 514");
    return NULL;
  }
  if (arena_ref) napi_delete_reference(env, arena_ref);
  if (meta_ref) napi_delete_reference(env, meta_ref);
  napi_create_reference(env, argv[0], 1, &arena_ref);
  napi_create_reference(env, argv[1], 1, &meta_ref);
  arena = a, arena_len = al, meta = (int32_t *)m, meta_len = ml / sizeof(int32_t);
  arena_env = env;
  return NULL;
}

#define FRAME_MAX (22 + 65535) /* the largest legal frame (OPEN_TAGGED); a bigger message is truncated */

enum { STATUS_OK = 0, STATUS_EOF = 1 };

/* Receives up to max_msgs messages (each one chunk of a stream) into the arena, and at most max_bytes
 * bytes when max_bytes > 0 (for SOCK_STREAM only: it bounds how many frames one wake-up can carry, so
 * that one flooding client cannot hold the loop; on SOCK_SEQPACKET it would truncate messages).
 * Returns the count; *status is 0, STATUS_EOF, or -errno.
 *
 * discard_fds: the broker keeps nothing of a client's. It receives with no control buffer at all, so
 * the kernel never installs a client's fds in the broker's table: it drops them (the last reference
 * goes at once) and flags the message MSG_CTRUNC, which the caller treats as a protocol error. A
 * client cannot even briefly spend the broker's fds this way. */
/* The broker's case, SOCK_SEQPACKET with fds discarded: every ready message in one recvmmsg, rather
 * than one recvmsg per message and one more that answers EAGAIN. Each message gets a slot of the
 * arena big enough for the largest frame, so a slot never truncates a legal frame; only the pages a
 * message is written to are ever touched. */
#define RECV_SLOT (65536 + 64) /* > MAX_FRAME (22 + 65535) */
#define RECV_BATCH_MAX 64

static int drain_seqpacket(int fd, int max_msgs, int *status) {
  struct mmsghdr msgs[RECV_BATCH_MAX];
  struct iovec iovs[RECV_BATCH_MAX];
  size_t n = (size_t)max_msgs;
  if (n > RECV_BATCH_MAX) n = RECV_BATCH_MAX;
  if (n > arena_len / RECV_SLOT) n = arena_len / RECV_SLOT;
  if (n > meta_len / 4) n = meta_len / 4;
  for (size_t i = 0; i < n; i++) {
    iovs[i] = (struct iovec){arena + i * RECV_SLOT, RECV_SLOT};
    msgs[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &iovs[i], .msg_iovlen = 1}};
  }
  int got;
  do got = recvmmsg(fd, msgs, (unsigned)n, MSG_DONTWAIT, NULL);
  while (got < 0 && errno == EINTR);
  if (got < 0) {
    if (errno != EAGAIN) *status = -errno;
    return 0;
  }
  int count = 0;
  for (int i = 0; i < got; i++) {
    int flags = msgs[i].msg_hdr.msg_flags;
    if (msgs[i].msg_len == 0 && !(flags & (MSG_TRUNC | MSG_CTRUNC))) {
      *status = STATUS_EOF; /* after EOF, recvmmsg fills the remaining entries with more of it */
      break;
    }
    meta[4 * count] = (int32_t)(i * RECV_SLOT);
    meta[4 * count + 1] = (int32_t)msgs[i].msg_len;
    meta[4 * count + 2] = flags;
    meta[4 * count + 3] = 0;
    count++;
  }
  return count;
}

static int drain(int fd, int max_msgs, size_t max_bytes, bool discard_fds, bool seqpacket, int *status) {
  *status = STATUS_OK;
  if (discard_fds && seqpacket && arena_len >= RECV_SLOT) return drain_seqpacket(fd, max_msgs, status);
  size_t off = 0, mi = 0;
  int count = 0;
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MSG)];
    struct cmsghdr align;
  } ctl;
  while (count < max_msgs && arena_len - off > FRAME_MAX && meta_len - mi >= 4 + MAX_FDS_PER_MSG) {
    size_t room = arena_len - off;
    if (max_bytes) {
      if (off >= max_bytes) break;
      if (room > max_bytes - off) room = max_bytes - off;
    }
    struct iovec iov = {arena + off, room};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    if (!discard_fds) m.msg_control = ctl.buf, m.msg_controllen = sizeof ctl.buf;
    ssize_t n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) *status = -errno;
      break;
    }
    int nfds = 0;
    size_t rec = mi;
    for (struct cmsghdr *c = m.msg_controllen ? CMSG_FIRSTHDR(&m) : NULL; c; c = CMSG_NXTHDR(&m, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t j = 0; j < k; j++) {
        int got;
        memcpy(&got, CMSG_DATA(c) + j * sizeof(int), sizeof(int));
        if (nfds >= MAX_FDS_PER_MSG) close(got);
        else meta[rec + 4 + nfds++] = got;
      }
    }
    if (n == 0 && nfds == 0 && !(m.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
      *status = STATUS_EOF;
      break;
    }
    meta[rec] = (int32_t)off;
    meta[rec + 1] = (int32_t)n;
    meta[rec + 2] = m.msg_flags & ~MSG_CMSG_CLOEXEC; /* the kernel echoes the request flag */
    meta[rec + 3] = nfds;
    mi += 4 + nfds;
    off += (size_t)n;
    count++;
  }
  return count;
}

/* ---- poller: a libuv poll watcher that calls into JS -----------------------------------------
 * In receive mode, a readable wake-up drains ready messages into the arena and makes one call into
 * JS for the whole batch: callback(events, count, status). Otherwise callback(events, 0, status). */
typedef struct {
  uv_poll_t handle;
  napi_env env;
  napi_ref self_ref; /* strong while started, so the JS object outlives its active watcher */
  napi_ref callback_ref;
  napi_async_context async_ctx;
  int fd;
  int mode; /* 0 notify, 1 receive and keep fds, 2 receive and close fds */
  int max_msgs;
  size_t max_bytes; /* 0: no byte budget per wake-up */
  bool seqpacket; /* message boundaries: the whole batch can be read with one recvmmsg */
  bool started, closed;
  bool handle_closed, finalized; /* freed when both the uv handle and the JS object are gone */
} poller_t;

enum { MODE_NOTIFY = 0, MODE_RECV = 1, MODE_RECV_DISCARD_FDS = 2 };

static void poller_handle_closed(uv_handle_t *h) {
  poller_t *p = h->data;
  p->handle_closed = true;
  if (p->finalized) free(p);
}

/* ---- bounded busy polling ----------------------------------------------------------------------
 * A synchronous client sends its next request a few microseconds after it gets a reply. If the
 * broker has gone to sleep meanwhile, that request waits for a wake-up: on a virtual machine whose
 * idle CPU halts, tens of microseconds, more than the open itself. With setBusyPoll(us) > 0, after
 * each wake-up that served requests the event loop keeps polling (epoll_wait with timeout 0, by
 * means of a libuv idle handle) for up to `us` microseconds before it sleeps again. The cost is CPU:
 * at most `us` microseconds of it per wake-up that served requests, and never while requests keep
 * coming faster than that (the loop is busy with them anyway). Off (0) by default. */
static uv_idle_t spin_idle;
static bool spin_ready, spin_active;
static uint64_t spin_ns, spin_deadline;

static uint64_t mono_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void spin_check(uv_idle_t *h) {
  if (mono_ns() < spin_deadline) return;
  uv_idle_stop(h);
  spin_active = false;
}

static void spin_after_work(void) {
  if (!spin_ns) return;
  spin_deadline = mono_ns() + spin_ns;
  if (!spin_active) {
    uv_idle_start(&spin_idle, spin_check);
    spin_active = true;
  }
}

/* setBusyPoll(us): 0 turns it off. */
static napi_value js_set_busy_poll(napi_env env, napi_callback_info info) {
  ARGS(1);
  UINT_ARG(0, us);
  if (!spin_ready) {
    uv_loop_t *loop;
    napi_get_uv_event_loop(env, &loop);
    uv_idle_init(loop, &spin_idle);
    uv_unref((uv_handle_t *)&spin_idle); /* never keeps the process alive */
    spin_ready = true;
  }
  spin_ns = (uint64_t)(us > 1000000 ? 1000000 : us) * 1000u;
  if (!spin_ns && spin_active) {
    uv_idle_stop(&spin_idle);
    spin_active = false;
  }
  return NULL;
}

/* Marks the watcher stopped (stopping it too, unless libuv already did) and lets the JS object go. */
static void poller_stopped(napi_env env, poller_t *p, bool stop_watcher) {
  if (!p->started) return;
  if (stop_watcher) uv_poll_stop(&p->handle);
  p->started = false;
  uint32_t rc;
  napi_reference_unref(env, p->self_ref, &rc);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  poller_t *p = h->data;
  napi_env env = p->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  int count = 0, st = status; /* libuv's status is already -errno */
  /* libuv stops a watcher whose fd reports EPOLLERR; keep our state in step. */
  if (status < 0 && !uv_is_active((uv_handle_t *)h)) poller_stopped(env, p, false);
  /* EPOLLERR reaches us as UV_EBADF; a receive tells the real story (ECONNRESET, EOF, data left). */
  if (p->mode != MODE_NOTIFY && (status == UV_EBADF || (status == 0 && (events & UV_READABLE))))
    count = drain(p->fd, p->max_msgs, p->max_bytes, p->mode == MODE_RECV_DISCARD_FDS, p->seqpacket, &st);
  if (status < 0 && st == 0) st = status; /* the watcher is stopped: the caller must not wait on it */
  napi_value self, cb, args[3], result;
  napi_get_reference_value(env, p->self_ref, &self);
  napi_get_reference_value(env, p->callback_ref, &cb);
  napi_create_int32(env, events, &args[0]);
  napi_create_int32(env, count, &args[1]);
  napi_create_int32(env, st, &args[2]);
  if (self && cb) {
    napi_status s = napi_make_callback(env, p->async_ctx, self, cb, 3, args, &result);
    if (s == napi_pending_exception) {
      /* Without this, an exception thrown in the callback would vanish. */
      napi_value exc;
      napi_get_and_clear_last_exception(env, &exc);
      napi_fatal_exception(env, exc);
    }
  }
  if (count > 0) spin_after_work();
  napi_close_handle_scope(env, scope);
}

static void poller_close(napi_env env, poller_t *p) {
  if (p->closed) return;
  p->closed = true;
  poller_stopped(env, p, true);
  napi_async_destroy(env, p->async_ctx);
  napi_delete_reference(env, p->callback_ref);
  p->callback_ref = NULL;
  uv_close((uv_handle_t *)&p->handle, poller_handle_closed);
}

static void poller_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  poller_t *p = data;
  /* A started poller holds a strong reference to its JS object, so only a stopped or closed one
   * reaches here. */
  p->finalized = true;
  if (p->self_ref) napi_delete_reference(env, p->self_ref);
  p->self_ref = NULL;
  if (!p->closed) poller_close(env, p);
  else if (p->handle_closed) free(p);
}

static poller_t *unwrap_poller(napi_env env, napi_value self) {
  poller_t *p = NULL;
  napi_unwrap(env, self, (void **)&p);
  if (!p || p->closed) {
    napi_throw_error(env, "ERR_POLLER_CLOSED", "poller is closed");
    return NULL;
  }
  return p;
}

/* new Poller(fd, mode, maxMsgs, callback, maxBytes = 0) */
static napi_value poller_new(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], self;
  CHECK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  if (argc < 4) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "too few arguments");
    return NULL;
  }
  INT_ARG(0, fd);
  INT_ARG(1, mode);
  INT_ARG(2, max_msgs);
  int32_t max_bytes = 0;
  if (argc >= 5 && arg_int(env, argv[4], &max_bytes)) max_bytes = 0;
  if (mode != MODE_NOTIFY && !arena) {
    napi_throw_error(env, "ERR_NO_ARENA", "setRecvArena must be called before a receiving poller is made");
    return NULL;
  }
  poller_t *p = calloc(1, sizeof *p);
  if (!p) return throw_errno(env, ENOMEM, "calloc");
  p->env = env, p->fd = fd, p->mode = mode, p->max_msgs = max_msgs > 0 ? max_msgs : 1;
  /* A budget below one whole frame could never make progress on a frame's tail; round it up. */
  p->max_bytes = max_bytes <= 0 ? 0 : max_bytes < 4096 ? 4096 : (size_t)max_bytes;
  int type = 0;
  socklen_t tlen = sizeof type;
  p->seqpacket = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0 && type == SOCK_SEQPACKET;
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  int r = uv_poll_init(loop, &p->handle, fd);
  if (r < 0) {
    free(p);
    return throw_errno(env, -r, "uv_poll_init");
  }
  p->handle.data = p;
  napi_value name;
  napi_create_string_utf8(env, "openhook:poll", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, self, name, &p->async_ctx);
  napi_create_reference(env, argv[3], 1, &p->callback_ref);
  napi_wrap(env, self, p, poller_finalize, NULL, &p->self_ref);
  return self;
}

/* start(events): UV_READABLE=1 | UV_WRITABLE=2 | UV_DISCONNECT=4; 0 stops. */
static napi_value poller_start(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, events);
  poller_t *p = unwrap_poller(env, self);
  if (!p) return NULL;
  if (events == 0) {
    poller_stopped(env, p, true);
    return NULL;
  }
  int r = uv_poll_start(&p->handle, events, on_poll);
  if (r < 0) return throw_errno(env, -r, "uv_poll_start");
  if (!p->started) {
    p->started = true;
    uint32_t rc;
    napi_reference_ref(env, p->self_ref, &rc);
  }
  return NULL;
}

static napi_value poller_ref(napi_env env, napi_callback_info info) {
  ARGS(1);
  bool on = true;
  napi_get_value_bool(env, argv[0], &on);
  poller_t *p = unwrap_poller(env, self);
  if (!p) return NULL;
  if (on) uv_ref((uv_handle_t *)&p->handle);
  else uv_unref((uv_handle_t *)&p->handle);
  return NULL;
}

static napi_value poller_close_js(napi_env env, napi_callback_info info) {
  napi_value self;
  CHECK(napi_get_cb_info(env, info, NULL, NULL, &self, NULL));
  poller_t *p = NULL;
  napi_unwrap(env, self, (void **)&p);
  if (p) poller_close(env, p);
  return NULL;
}

napi_status poller_register(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
    {"setRecvArena", js_set_recv_arena},
    {"setBusyPoll", js_set_busy_poll},
  };
  static const export_fn methods[] = {
    {"start", poller_start},
    {"ref", poller_ref},
    {"close", poller_close_js},
  };
  EXPORT_CONSTANT(exports, UV_READABLE);
  EXPORT_CONSTANT(exports, UV_WRITABLE);
  EXPORT_CONSTANT(exports, UV_DISCONNECT);
  EXPORT_CONSTANT(exports, STATUS_EOF);
  EXPORT_CONSTANT(exports, FRAME_MAX);
  napi_status s = export_functions(env, exports, fns, COUNT(fns));
  return s == napi_ok ? export_class(env, exports, "Poller", poller_new, methods, COUNT(methods)) : s;
}
