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
#include <signal.h>
#include <node_api.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <uv.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "napi.h"
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

static napi_value int_value(napi_env env, int64_t v) {
  napi_value out;
  napi_create_int64(env, v, &out);
  return out;
}

/* Reads argc arguments; integers as uint32 (ids, addresses: halves) or int32 (fds, errnos). */
static bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "too few arguments");
    return false;
  }
  return true;
}

static int32_t i32(napi_env env, napi_value v) {
  int32_t out = -1;
  napi_get_value_int32(env, v, &out);
  return out;
}

static uint64_t u64_of(napi_env env, napi_value lo, napi_value hi) {
  uint32_t l = 0, h = 0;
  napi_get_value_uint32(env, lo, &l);
  napi_get_value_uint32(env, hi, &h);
  return (uint64_t)h << 32 | l;
}

/* A typed array's bytes (Uint32Array or Buffer), or NULL. */
static void *typed_bytes(napi_env env, napi_value v, size_t *len) {
  bool is = false;
  void *data = NULL;
  napi_is_typedarray(env, v, &is);
  if (is) {
    napi_typedarray_type type;
    size_t n;
    napi_value ab;
    size_t off;
    if (napi_get_typedarray_info(env, v, &type, &n, &data, &ab, &off) != napi_ok) return NULL;
    size_t unit = type == napi_uint32_array || type == napi_int32_array || type == napi_float32_array ? 4
                  : type == napi_float64_array || type == napi_bigint64_array || type == napi_biguint64_array ? 8
                  : type == napi_uint16_array || type == napi_int16_array ? 2 : 1;
    *len = n * unit;
    return data;
  }
  return NULL;
}

/* receiveListener(socket): the listener fd the launch helper sent (SCM_RIGHTS, close-on-exec here),
 * -EAGAIN if it has not arrived yet, -EPIPE if the helper closed the socket without sending one. */
static napi_value js_receive_listener(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  int sock = i32(env, argv[0]);
  char byte;
  struct iovec iov = {.iov_base = &byte, .iov_len = 1};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * 4)];
  } ctl;
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
  ssize_t r;
  do r = recvmsg(sock, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  while (r < 0 && errno == EINTR);
  if (r < 0) return int_value(env, -errno);
  if (r == 0) return int_value(env, -EPIPE);
  int fd = -1;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; i++) {
      int got;
      memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
      if (fd < 0) fd = got;
      else close(got); /* one listener only: anything else is dropped */
    }
  }
  if (m.msg_flags & MSG_CTRUNC || fd < 0) {
    if (fd >= 0) close(fd);
    return int_value(env, -EPROTO);
  }
  return int_value(env, fd);
}

/* notifySyncWakeUp(listener): asks for synchronous wake-ups (Linux 6.6); 0, or -errno (EINVAL on
 * older kernels, where the hook works the same, only slower). */
static napi_value js_notify_sync_wake_up(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  int r = ioctl(i32(env, argv[0]), SECCOMP_IOCTL_NOTIF_SET_FLAGS, (uint64_t)SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP);
  return int_value(env, r < 0 ? -errno : 0);
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
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  int fd = i32(env, argv[0]);
  size_t len = 0;
  uint32_t *out = typed_bytes(env, argv[1], &len);
  if (!out || len < NOTIF_WORDS * 4) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "out must be a Uint32Array of 20 words");
    return NULL;
  }
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int ready;
  do ready = poll(&p, 1, 0);
  while (ready < 0 && errno == EINTR);
  if (ready < 0) return int_value(env, -errno);
  if (!(p.revents & POLLIN)) return int_value(env, p.revents & (POLLHUP | POLLERR) ? -EPIPE : -EAGAIN);
  struct seccomp_notif n;
  memset(&n, 0, sizeof n); /* the kernel refuses a struct that is not zeroed (EINVAL) */
  if (ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &n) < 0) return int_value(env, -errno);
  fill_words(out, &n);
  return int_value(env, 0);
}

/* notifyRespond(listener, idLo, idHi, val, errno, continue): the target's syscall returns val, or
 * fails with errno (positive) when it is not 0; with continue, the kernel runs the syscall itself. */
static napi_value js_notify_respond(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  if (!get_args(env, info, 6, argv)) return NULL;
  struct seccomp_notif_resp r;
  memset(&r, 0, sizeof r);
  r.id = u64_of(env, argv[1], argv[2]);
  int64_t val = 0;
  napi_get_value_int64(env, argv[3], &val);
  int32_t err = i32(env, argv[4]);
  bool cont = false;
  napi_get_value_bool(env, argv[5], &cont);
  if (cont) r.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
  else if (err) r.error = -err;
  else r.val = val;
  return int_value(env, ioctl(i32(env, argv[0]), SECCOMP_IOCTL_NOTIF_SEND, &r) < 0 ? -errno : 0);
}

/* notifyAddFd(listener, idLo, idHi, fd, cloexec): installs a copy of fd in the target at its lowest
 * free number and answers the syscall with that number, atomically (ADDFD_FLAG_SEND): the program
 * never holds an fd it was not told about. Returns the number, or -errno (EMFILE: the target's
 * table is full; ENOENT: the call is gone). The caller still owns fd. */
static napi_value js_notify_addfd(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!get_args(env, info, 5, argv)) return NULL;
  struct seccomp_notif_addfd a;
  memset(&a, 0, sizeof a);
  a.id = u64_of(env, argv[1], argv[2]);
  a.srcfd = (uint32_t)i32(env, argv[3]);
  bool cloexec = false;
  napi_get_value_bool(env, argv[4], &cloexec);
  a.newfd_flags = cloexec ? O_CLOEXEC : 0;
  a.flags = SECCOMP_ADDFD_FLAG_SEND;
  int r = ioctl(i32(env, argv[0]), SECCOMP_IOCTL_NOTIF_ADDFD, &a);
  return int_value(env, r < 0 ? -errno : r);
}

/* notifyIdValid(listener, idLo, idHi): 0 while the target still waits in that syscall, else -ENOENT.
 * Between a read of the target's memory (or a look at its /proc entries) and any use of what was
 * read: it proves the pid was not reused and the call was not abandoned meanwhile. */
static napi_value js_notify_id_valid(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  uint64_t id = u64_of(env, argv[1], argv[2]);
  return int_value(env, ioctl(i32(env, argv[0]), SECCOMP_IOCTL_NOTIF_ID_VALID, &id) < 0 ? -errno : 0);
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
  napi_value argv[4];
  if (!get_args(env, info, 4, argv)) return NULL;
  pid_t pid = i32(env, argv[0]);
  uint64_t addr = u64_of(env, argv[1], argv[2]);
  size_t cap = 0;
  char *buf = typed_bytes(env, argv[3], &cap);
  if (!buf || cap == 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "buf must be a Buffer");
    return NULL;
  }
  if (addr == 0) return int_value(env, -EFAULT);
  /* Most paths are short: read a first piece, and the rest only when no NUL is in it. */
  size_t first = cap < 256 ? cap : 256;
  ssize_t got = read_remote(pid, addr, buf, first);
  if (got < 0) return int_value(env, got == -ESRCH ? -ESRCH : -EFAULT);
  char *nul = memchr(buf, 0, (size_t)got);
  if (!nul && (size_t)got == first && first < cap) {
    ssize_t more = read_remote(pid, addr + first, buf + first, cap - first);
    if (more > 0) got += more;
    nul = memchr(buf, 0, (size_t)got);
  }
  if (nul) return int_value(env, nul - buf);
  return int_value(env, (size_t)got == cap ? -ENAMETOOLONG : -EFAULT);
}

/* readMemory(pid, addrLo, addrHi, buf, len): exactly len bytes at addr into buf; len or -errno. */
static napi_value js_read_memory(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!get_args(env, info, 5, argv)) return NULL;
  pid_t pid = i32(env, argv[0]);
  uint64_t addr = u64_of(env, argv[1], argv[2]);
  size_t cap = 0;
  char *buf = typed_bytes(env, argv[3], &cap);
  int32_t len = i32(env, argv[4]);
  if (!buf || len < 0 || (size_t)len > cap) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "buf must be a Buffer of at least len bytes");
    return NULL;
  }
  ssize_t got = read_remote(pid, addr, buf, (size_t)len);
  if (got < 0) return int_value(env, got);
  return int_value(env, got == len ? got : -EFAULT);
}


/* ---- the receiver: a thread that takes notifications the moment they arrive ---------------------
 * Until the broker has received a notification, a signal interrupts the program's call (the kernel
 * then restarts it, or returns EINTR to a handler without SA_RESTART); once received, with
 * WAIT_KILLABLE_RECV, only a fatal signal does. The event loop may be busy for a while (other
 * clients, a GC pause): so a thread receives each notification at once, into a queue, and wakes the
 * loop (uv_async), which answers them in order. The thread only receives: it never decides. */
#define RING 256
typedef struct {
  int listener, stopfd;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t room;
  struct seccomp_notif ring[RING];
  unsigned head, count; /* guarded by mu */
  bool hup, stopping, thread_started;
  uv_async_t async;
  napi_env env;
  napi_ref callback;
  napi_async_context actx;
} receiver_t;

#define MAX_RECEIVERS 64
static receiver_t *receivers[MAX_RECEIVERS];

static void *receive_loop(void *arg) {
  receiver_t *r = arg;
  struct pollfd p[2] = {{.fd = r->listener, .events = POLLIN}, {.fd = r->stopfd, .events = POLLIN}};
  for (;;) {
    pthread_mutex_lock(&r->mu);
    while (r->count == RING && !r->stopping) pthread_cond_wait(&r->room, &r->mu);
    bool stop = r->stopping;
    pthread_mutex_unlock(&r->mu);
    if (stop) break;
    int n = poll(p, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[1].revents) break;
    if (!(p[0].revents & POLLIN)) {
      if (p[0].revents & (POLLHUP | POLLERR | POLLNVAL)) {
        pthread_mutex_lock(&r->mu);
        r->hup = true;
        pthread_mutex_unlock(&r->mu);
        uv_async_send(&r->async);
        break;
      }
      continue;
    }
    struct seccomp_notif n1;
    memset(&n1, 0, sizeof n1);
    if (ioctl(r->listener, SECCOMP_IOCTL_NOTIF_RECV, &n1) < 0) continue; /* ENOENT: its target died */
    pthread_mutex_lock(&r->mu);
    r->ring[(r->head + r->count) % RING] = n1;
    r->count++;
    pthread_mutex_unlock(&r->mu);
    uv_async_send(&r->async);
  }
  return NULL;
}

static void receiver_wake(uv_async_t *h) {
  receiver_t *r = h->data;
  napi_env env = r->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb, recv, result;
  napi_get_reference_value(env, r->callback, &cb);
  napi_get_global(env, &recv); /* make_callback needs an object as its receiver */
  if (cb && napi_make_callback(env, r->actx, recv, cb, 0, NULL, &result) == napi_pending_exception) {
    napi_value exc;
    napi_get_and_clear_last_exception(env, &exc);
    napi_fatal_exception(env, exc);
  }
  napi_close_handle_scope(env, scope);
}

static void receiver_closed(uv_handle_t *h) {
  receiver_t *r = h->data;
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->room);
  free(r);
}

/* receiverStart(listener, callback): a receiving thread for listener; callback() is called on the
 * loop when notifications (or the hang-up) are queued. Returns a receiver id, or -errno. */
static napi_value js_receiver_start(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  int slot = -1;
  for (int i = 0; i < MAX_RECEIVERS; i++)
    if (!receivers[i]) {
      slot = i;
      break;
    }
  if (slot < 0) return int_value(env, -EMFILE);
  receiver_t *r = calloc(1, sizeof *r);
  if (!r) return int_value(env, -ENOMEM);
  r->listener = i32(env, argv[0]);
  r->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (r->stopfd < 0) {
    int e = errno;
    free(r);
    return int_value(env, -e);
  }
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->room, NULL);
  r->env = env;
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  uv_async_init(loop, &r->async, receiver_wake);
  r->async.data = r;
  napi_create_reference(env, argv[1], 1, &r->callback);
  napi_value name;
  napi_create_string_utf8(env, "openhook:notify", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &r->actx);
  /* The thread needs no signals: the loop's own handlers stay on the main thread. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int e = pthread_create(&r->thread, NULL, receive_loop, r);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (e) {
    close(r->stopfd);
    napi_delete_reference(env, r->callback);
    napi_async_destroy(env, r->actx);
    uv_close((uv_handle_t *)&r->async, receiver_closed);
    return int_value(env, -e);
  }
  r->thread_started = true;
  receivers[slot] = r;
  return int_value(env, slot);
}

static receiver_t *receiver_of(napi_env env, napi_value v) {
  int32_t id = i32(env, v);
  return id >= 0 && id < MAX_RECEIVERS ? receivers[id] : NULL;
}

/* receiverTake(id, out): the oldest queued notification into out (as notifyRecv), 0; -EAGAIN when
 * none is queued; -EPIPE when none is queued and no program is left. */
static napi_value js_receiver_take(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  receiver_t *r = receiver_of(env, argv[0]);
  size_t len = 0;
  uint32_t *out = typed_bytes(env, argv[1], &len);
  if (!r || !out || len < NOTIF_WORDS * 4) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "a live receiver and a Uint32Array of 20 words");
    return NULL;
  }
  struct seccomp_notif n;
  pthread_mutex_lock(&r->mu);
  if (r->count == 0) {
    bool hup = r->hup;
    pthread_mutex_unlock(&r->mu);
    return int_value(env, hup ? -EPIPE : -EAGAIN);
  }
  n = r->ring[r->head];
  r->head = (r->head + 1) % RING;
  if (r->count-- == RING) pthread_cond_signal(&r->room);
  pthread_mutex_unlock(&r->mu);
  fill_words(out, &n);
  return int_value(env, 0);
}

/* receiverStop(id): stops and joins the thread (queued notifications are dropped: the caller closes
 * the listener next, and their targets get ENOSYS). */
static napi_value js_receiver_stop(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  int32_t id = i32(env, argv[0]);
  receiver_t *r = receiver_of(env, argv[0]);
  if (!r) return NULL;
  receivers[id] = NULL;
  pthread_mutex_lock(&r->mu);
  r->stopping = true;
  pthread_cond_signal(&r->room);
  pthread_mutex_unlock(&r->mu);
  uint64_t one = 1;
  if (write(r->stopfd, &one, sizeof one) < 0) { /* the eventfd cannot be full: one write */
  }
  if (r->thread_started) pthread_join(r->thread, NULL);
  close(r->stopfd);
  napi_delete_reference(env, r->callback);
  napi_async_destroy(env, r->actx);
  uv_close((uv_handle_t *)&r->async, receiver_closed);
  return NULL;
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

/* fetchFd(tid, tgid, fd): a copy of fd as thread tid holds it (pidfd_getfd), close-on-exec, or
 * -errno. The thread's own pidfd first (PIDFD_THREAD, Linux 6.9: a thread may have unshared its fd
 * table); else its process's. For linkat(fd, "", AT_EMPTY_PATH): the broker names the file the
 * program holds. The caller checks NOTIF_ID_VALID afterwards (the tid may have been reused). */
static napi_value js_fetch_fd(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  pid_t tid = i32(env, argv[0]), tgid = i32(env, argv[1]);
  int fd = i32(env, argv[2]);
  if (fd < 0) return int_value(env, -EBADF);
  int pidfd = (int)syscall(SYS_pidfd_open, tid, PIDFD_THREAD);
  if (pidfd < 0 && errno == EINVAL) pidfd = (int)syscall(SYS_pidfd_open, tgid, 0);
  if (pidfd < 0) return int_value(env, -errno);
  int got = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
  int err = errno;
  close(pidfd);
  return int_value(env, got < 0 ? -err : got);
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
    {"receiverStart", js_receiver_start},
    {"receiverTake", js_receiver_take},
    {"receiverStop", js_receiver_stop},
    {"fetchFd", js_fetch_fd},
  };
  return export_functions(env, exports, fns, COUNT(fns));
}
