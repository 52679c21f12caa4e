/* The syscall hook's native half: the seccomp user-notification ioctls and reads of a target's
 * memory, and nothing else. What to do with a notification is decided in TypeScript (src/hook/).
 *
 * Every call returns a result or -errno, never throws on the request path. ENOENT from an ioctl
 * means the target's syscall is no longer waiting (it died, or a signal abandoned the call): the
 * caller drops the notification, it is not an error of the broker.
 *
 * A notification id is a u64; JS passes it as two u32 halves (idLo, idHi) so that the request path
 * allocates no BigInt. Addresses in the target come the same way (lo, hi).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/seccomp.h>
#include <node_api.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "napi.h"
#include "notify.h"
#include "passed-fd.h"
#include "parts.h"

#ifndef SECCOMP_ADDFD_FLAG_SEND
#define SECCOMP_ADDFD_FLAG_SEND (1UL << 1)
#endif

/* Linux 6.6: the target and the broker hand the CPU to each other at once (a synchronous
 * ping-pong), instead of a wake-up through the scheduler on each side. Headers may be older. */
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif

/* Words of the array notifyRecv fills: id (2), pid, flags, nr, arch, instruction pointer (2), six
 * arguments (2 each, low word first). */
#define NOTIF_WORDS 20

/* A u64 passed as two u32 arguments, the low half at i. */
#define U64_ARG(i, name)                                                                           \
  UINT_ARG(i, name##_lo);                                                                          \
  UINT_ARG((i) + 1, name##_hi);                                                                    \
  uint64_t name = (uint64_t)name##_hi << 32 | name##_lo

/* receiveListener(socket): the listener fd the launch helper sent (SCM_RIGHTS, close-on-exec here),
 * -EAGAIN if it has not arrived yet, -EPIPE if the helper closed the socket without sending one. */
static napi_value js_receive_listener(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, sock);
  char byte;
  int fd, flags;
  ssize_t r = recv_passed_fd(sock, &byte, 1, MSG_DONTWAIT | MSG_CMSG_CLOEXEC, &fd, &flags);
  if (r < 0) return make_int(env, -errno);
  if (r == 0) return make_int(env, -EPIPE);
  if (flags & MSG_CTRUNC || fd < 0) {
    if (fd >= 0) close(fd);
    return make_int(env, -EPROTO);
  }
  return make_int(env, fd);
}

/* notifySyncWakeUp(listener): asks for synchronous wake-ups (Linux 6.6); 0, or -errno (EINVAL on
 * older kernels, where the hook works the same, only slower). */
static napi_value js_notify_sync_wake_up(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, listener);
  int r = ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, (uint64_t)SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP);
  return make_int(env, r < 0 ? -errno : 0);
}

static void fill_words(uint32_t *out, const struct seccomp_notif *n) {
  out[0] = (uint32_t)n->id, out[1] = (uint32_t)(n->id >> 32);
  out[2] = n->pid, out[3] = n->flags;
  out[4] = (uint32_t)n->data.nr, out[5] = n->data.arch;
  out[6] = (uint32_t)n->data.instruction_pointer, out[7] = (uint32_t)(n->data.instruction_pointer >> 32);
  for (int i = 0; i < 6; i++) {
    out[8 + 2 * i] = (uint32_t)n->data.args[i];
    out[9 + 2 * i] = (uint32_t)(n->data.args[i] >> 32);
  }
}

/* notifyRecv(listener, out: Uint32Array(20)): 0 and one notification in out; -EAGAIN if none is
 * pending; -EPIPE when no target is left (POLLHUP); -ENOENT if the pending one vanished (its target
 * died between the poll and the receive). RECV blocks when nothing is pending (and, on some kernels,
 * even after the last target is gone), so a zero-timeout poll asks first. */
static napi_value js_notify_recv(napi_env env, napi_callback_info info) {
  ARGS(2);
  INT_ARG(0, fd);
  size_t len = 0;
  uint8_t *out;
  if (get_buffer(env, argv[1], &out, &len) || len < NOTIF_WORDS * 4) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "out must be a Uint32Array of 20 words");
    return NULL;
  }
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int ready;
  do ready = poll(&p, 1, 0);
  while (ready < 0 && errno == EINTR);
  if (ready < 0) return make_int(env, -errno);
  if (!(p.revents & POLLIN)) return make_int(env, p.revents & (POLLHUP | POLLERR) ? -EPIPE : -EAGAIN);
  struct seccomp_notif n;
  memset(&n, 0, sizeof n); /* the kernel refuses a struct that is not zeroed (EINVAL) */
  if (ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &n) < 0) return make_int(env, -errno);
  fill_words((uint32_t *)out, &n);
  return make_int(env, 0);
}

/* notifyRespond(listener, idLo, idHi, val, errno, continue): the target's syscall returns val, or
 * fails with errno (positive) when it is not 0; with continue, the kernel runs the syscall itself. */
static napi_value js_notify_respond(napi_env env, napi_callback_info info) {
  ARGS(6);
  INT_ARG(0, listener);
  U64_ARG(1, id);
  I64_ARG(3, val);
  INT_ARG(4, err);
  BOOL_ARG(5, cont);
  struct seccomp_notif_resp r;
  memset(&r, 0, sizeof r);
  r.id = id;
  if (cont) r.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
  else if (err) r.error = -err;
  else r.val = val;
  return make_int(env, ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &r) < 0 ? -errno : 0);
}

/* notifyAddFd(listener, idLo, idHi, fd, cloexec): installs a copy of fd in the target at its lowest
 * free number and answers the syscall with that number, atomically (ADDFD_FLAG_SEND): the program
 * never holds an fd it was not told about. Returns the number, or -errno (EMFILE: the target's
 * table is full; ENOENT: the call is gone). The caller still owns fd. */
static napi_value js_notify_addfd(napi_env env, napi_callback_info info) {
  ARGS(5);
  INT_ARG(0, listener);
  U64_ARG(1, id);
  INT_ARG(3, fd);
  BOOL_ARG(4, cloexec);
  struct seccomp_notif_addfd a;
  memset(&a, 0, sizeof a);
  a.id = id;
  a.srcfd = (uint32_t)fd;
  a.newfd_flags = cloexec ? O_CLOEXEC : 0;
  a.flags = SECCOMP_ADDFD_FLAG_SEND;
  int r = ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &a);
  return make_int(env, r < 0 ? -errno : r);
}

/* notifyIdValid(listener, idLo, idHi): 0 while the target still waits in that syscall, else -ENOENT.
 * Between a read of the target's memory (or a look at its /proc entries) and any use of what was
 * read: it proves the pid was not reused and the call was not abandoned meanwhile. */
static napi_value js_notify_id_valid(napi_env env, napi_callback_info info) {
  ARGS(3);
  INT_ARG(0, listener);
  U64_ARG(1, id);
  return make_int(env, ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) < 0 ? -errno : 0);
}

/* Reads up to len bytes at addr in pid, split at page boundaries so that a string near the end of
 * its mapping is read up to the unmapped page and no further (process_vm_readv transfers whole
 * iovec elements only). Returns the bytes read, or -errno. */
static ssize_t read_remote(pid_t pid, uint64_t addr, void *buf, size_t len) {
  static size_t page;
  if (!page) page = (size_t)sysconf(_SC_PAGESIZE);
  struct iovec local = {.iov_base = buf, .iov_len = len};
  struct iovec remote[8];
  int n = 0;
  size_t done = 0;
  while (done < len && n < 8) {
    uint64_t at = addr + done;
    size_t chunk = page - (size_t)(at % page);
    if (chunk > len - done) chunk = len - done;
    remote[n].iov_base = (void *)(uintptr_t)at;
    remote[n++].iov_len = chunk;
    done += chunk;
  }
  local.iov_len = done;
  ssize_t r = process_vm_readv(pid, &local, 1, remote, (unsigned long)n, 0);
  return r < 0 ? -errno : r;
}

/* readString(pid, addrLo, addrHi, buf): the NUL-terminated string at addr, copied into buf (whose
 * length bounds it, PATH_MAX for paths): its length without the NUL, -ENAMETOOLONG if no NUL lies
 * within buf, -EFAULT if it is not readable. Read once: the caller works on this copy only. */
static napi_value js_read_string(napi_env env, napi_callback_info info) {
  ARGS(4);
  INT_ARG(0, pid);
  U64_ARG(1, addr);
  size_t cap = 0;
  uint8_t *buf;
  if (get_buffer(env, argv[3], &buf, &cap) || cap == 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "buf must be a Buffer");
    return NULL;
  }
  if (addr == 0) return make_int(env, -EFAULT);
  /* Most paths are short: read a first piece, and the rest only when no NUL is in it. */
  size_t first = cap < 256 ? cap : 256;
  ssize_t got = read_remote(pid, addr, buf, first);
  if (got < 0) return make_int(env, got == -ESRCH ? -ESRCH : -EFAULT);
  uint8_t *nul = memchr(buf, 0, (size_t)got);
  if (!nul && (size_t)got == first && first < cap) {
    ssize_t more = read_remote(pid, addr + first, buf + first, cap - first);
    if (more > 0) got += more;
    nul = memchr(buf, 0, (size_t)got);
  }
  if (nul) return make_int(env, nul - buf);
  return make_int(env, (size_t)got == cap ? -ENAMETOOLONG : -EFAULT);
}

/* readMemory(pid, addrLo, addrHi, buf, len): exactly len bytes at addr into buf; len or -errno. */
static napi_value js_read_memory(napi_env env, napi_callback_info info) {
  ARGS(5);
  INT_ARG(0, pid);
  U64_ARG(1, addr);
  INT_ARG(4, len);
  size_t cap = 0;
  uint8_t *buf;
  if (get_buffer(env, argv[3], &buf, &cap) || len < 0 || (size_t)len > cap) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "buf must be a Buffer of at least len bytes");
    return NULL;
  }
  ssize_t got = read_remote(pid, addr, buf, (size_t)len);
  if (got < 0) return make_int(env, got);
  return make_int(env, got == len ? got : -EFAULT);
}

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif

/* See notify.h. The thread's own pidfd first (PIDFD_THREAD, Linux 6.9: a thread may have unshared
 * its fd table); else its process's. */
int fetch_fd(pid_t tid, pid_t tgid, int fd) {
  if (fd < 0) return -EBADF;
  int pidfd = (int)syscall(SYS_pidfd_open, tid, PIDFD_THREAD);
  if (pidfd < 0 && errno == EINVAL) pidfd = (int)syscall(SYS_pidfd_open, tgid, 0);
  if (pidfd < 0) return -errno;
  int got = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
  int err = errno;
  close(pidfd);
  return got < 0 ? -err : got;
}

/* fetchFd(tid, tgid, fd): fetch_fd, for linkat(fd, "", AT_EMPTY_PATH): the broker names the file
 * the program holds. The caller checks NOTIF_ID_VALID afterwards (the tid may have been reused). */
static napi_value js_fetch_fd(napi_env env, napi_callback_info info) {
  ARGS(3);
  INT_ARG(0, tid);
  INT_ARG(1, tgid);
  INT_ARG(2, fd);
  return make_int(env, fetch_fd(tid, tgid, fd));
}

/* The part's register function (see native/module.c). */
napi_status notify_register(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
    {"receiveListener", js_receive_listener},
    {"notifyRecv", js_notify_recv},
    {"notifySyncWakeUp", js_notify_sync_wake_up},
    {"notifyRespond", js_notify_respond},
    {"notifyAddFd", js_notify_addfd},
    {"notifyIdValid", js_notify_id_valid},
    {"readString", js_read_string},
    {"readMemory", js_read_memory},
    {"fetchFd", js_fetch_fd},
  };
  return export_functions(env, exports, fns, COUNT(fns));
}
