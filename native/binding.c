/* openhook native binding: the syscalls Node lacks, and nothing else.
 *
 * No policy lives here. Calls on the request path return a result or -errno, because building and
 * throwing an Error costs microseconds; set-up calls throw Node-style errors (code, errno, syscall).
 * The TypeScript side (src/native.ts) gives every function a typed signature.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <linux/magic.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>
#include <time.h>
#include <uchar.h>
#include <uv.h>

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#define MAX_FDS_PER_MSG 253 /* SCM_MAX_FD */

#define CHECK(call)                                                                                \
  do {                                                                                             \
    if ((call) != napi_ok) return throw_last(env);                                                 \
  } while (0)

static napi_value throw_last(napi_env env) {
  const napi_extended_error_info *info = NULL;
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) {
    napi_get_last_error_info(env, &info);
    napi_throw_error(env, "ERR_OPENHOOK_NAPI", info && info->error_message ? info->error_message : "N-API call failed");
  }
  return NULL;
}

static const char *errno_code(int e) {
  switch (e) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(ESRCH) E(EINTR) E(EIO) E(ENXIO) E(E2BIG) E(EBADF) E(EAGAIN) E(ENOMEM) E(EACCES)
    E(EFAULT) E(EBUSY) E(EEXIST) E(EXDEV) E(ENODEV) E(ENOTDIR) E(EISDIR) E(EINVAL) E(ENFILE) E(EMFILE)
    E(ETXTBSY) E(EFBIG) E(ENOSPC) E(ESPIPE) E(EROFS) E(EMLINK) E(EPIPE) E(ERANGE) E(ENAMETOOLONG)
    E(ENOSYS) E(ENOTEMPTY) E(ELOOP) E(ENOPROTOOPT) E(EPROTO) E(EMSGSIZE) E(ENOTSOCK) E(EPROTOTYPE)
    E(EOPNOTSUPP) E(EADDRINUSE) E(EADDRNOTAVAIL) E(ECONNRESET) E(ENOBUFS) E(EISCONN) E(ENOTCONN)
    E(ETIMEDOUT) E(ECONNREFUSED) E(EALREADY) E(EINPROGRESS) E(EDQUOT) E(ESTALE) E(EOVERFLOW)
#undef E
    default: return "EUNKNOWN";
  }
}

/* Throws an Error shaped like Node's SystemError: message "CODE: strerror, syscall", and the
 * properties code, errno (negative, as libuv reports it) and syscall. */
static napi_value throw_errno(napi_env env, int err, const char *syscall_name) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s, %s", errno_code(err), strerror(err), syscall_name);
  napi_value code, message, error, errno_value, syscall_value;
  napi_create_string_utf8(env, errno_code(err), NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message);
  napi_create_error(env, code, message, &error);
  napi_create_int32(env, -err, &errno_value);
  napi_create_string_utf8(env, syscall_name, NAPI_AUTO_LENGTH, &syscall_value);
  napi_set_named_property(env, error, "errno", errno_value);
  napi_set_named_property(env, error, "syscall", syscall_value);
  napi_throw(env, error);
  return NULL;
}

static napi_value make_int(napi_env env, int64_t v) {
  napi_value out;
  napi_create_int64(env, v, &out);
  return out;
}

static int arg_int(napi_env env, napi_value v, int32_t *out) {
  return napi_get_value_int32(env, v, out) == napi_ok ? 0 : -1;
}

static int arg_uint(napi_env env, napi_value v, uint32_t *out) {
  return napi_get_value_uint32(env, v, out) == napi_ok ? 0 : -1;
}

/* A path argument is a Buffer, or a byte string: a JS string whose every char is one byte (latin1),
 * the form the TypeScript side uses so that paths that are not UTF-8 keep their exact bytes. The
 * result is NUL-terminated in `out`; an embedded NUL, a char above 0xFF or an over-long path is
 * refused, never truncated or re-encoded. */
static int arg_path(napi_env env, napi_value v, char *out, size_t cap, size_t *len_out) {
  bool is_buffer = false;
  napi_is_buffer(env, v, &is_buffer);
  size_t len = 0;
  if (is_buffer) {
    void *data;
    if (napi_get_buffer_info(env, v, &data, &len) != napi_ok) return -EINVAL;
    if (len >= cap) return -ENAMETOOLONG;
    memcpy(out, data, len);
  } else {
    char16_t wide[PATH_MAX];
    if (napi_get_value_string_utf16(env, v, NULL, 0, &len) != napi_ok) return -EINVAL;
    if (len >= cap || len >= PATH_MAX) return -ENAMETOOLONG;
    napi_get_value_string_utf16(env, v, wide, PATH_MAX, &len);
    for (size_t i = 0; i < len; i++) {
      if (wide[i] > 0xff) return -EINVAL;
      out[i] = (char)wide[i];
    }
  }
  out[len] = 0;
  if (memchr(out, 0, len)) return -EINVAL;
  if (len_out) *len_out = len;
  return 0;
}

#define ARGS(n)                                                                                    \
  size_t argc = n;                                                                                 \
  napi_value argv[n];                                                                              \
  napi_value self;                                                                                 \
  CHECK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));                                    \
  (void)self;                                                                                      \
  if (argc < n) {                                                                                  \
    napi_throw_type_error(env, "ERR_INVALID_ARG", "too few arguments");                            \
    return NULL;                                                                                   \
  }

#define INT_ARG(i, name)                                                                           \
  int32_t name;                                                                                    \
  if (arg_int(env, argv[i], &name)) {                                                              \
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", #name " must be an integer");               \
    return NULL;                                                                                   \
  }

#define UINT_ARG(i, name)                                                                          \
  uint32_t name;                                                                                   \
  if (arg_uint(env, argv[i], &name)) {                                                             \
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", #name " must be an unsigned integer");      \
    return NULL;                                                                                   \
  }

/* A path argument for a request-path call: a bad one (NUL inside, too long) is -errno, not a throw. */
#define PATH_ARG(i, name)                                                                          \
  char name[PATH_MAX];                                                                             \
  {                                                                                                \
    int bad = arg_path(env, argv[i], name, sizeof name, NULL);                                     \
    if (bad) return make_int(env, bad);                                                            \
  }

/* ---- sockets ---------------------------------------------------------------------------------- */

static napi_value js_socket(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, type);
  int fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return throw_errno(env, errno, "socket");
  return make_int(env, fd);
}

static napi_value js_socketpair(napi_env env, napi_callback_info info) {
  ARGS(2);
  INT_ARG(0, type);
  bool nonblock = false;
  napi_get_value_bool(env, argv[1], &nonblock);
  int sv[2];
  if (socketpair(AF_UNIX, type | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0, sv) < 0)
    return throw_errno(env, errno, "socketpair");
  napi_value out;
  CHECK(napi_create_array_with_length(env, 2, &out));
  napi_set_element(env, out, 0, make_int(env, sv[0]));
  napi_set_element(env, out, 1, make_int(env, sv[1]));
  return out;
}

static int split_path(const char *path, char *dir, size_t dircap, const char **base) {
  const char *slash = strrchr(path, '/');
  if (!slash) {
    snprintf(dir, dircap, ".");
    *base = path;
  } else {
    size_t n = (size_t)(slash - path);
    if (n == 0) n = 1; /* "/sock" lives in "/" */
    if (n >= dircap) return -ENAMETOOLONG;
    memcpy(dir, path, n);
    dir[n] = 0;
    *base = slash + 1;
  }
  if (!**base || !strcmp(*base, ".") || !strcmp(*base, "..")) return -EINVAL;
  return 0;
}

/* An inode number alone can be reused at once after an unlink, so a socket file is known by its
 * device, inode and birth time together (rename changes ctime, never btime), folded into 64 bits.
 * Where the filesystem has no birth time, device and inode remain. */
static uint64_t file_identity(int dirfd, const char *name) {
  struct statx stx;
  if (statx(dirfd, name, AT_SYMLINK_NOFOLLOW, STATX_TYPE | STATX_INO | STATX_BTIME, &stx) < 0) return 0;
  if ((stx.stx_mode & S_IFMT) != S_IFSOCK) return 0;
  uint64_t btime_s = (stx.stx_mask & STATX_BTIME) ? (uint64_t)stx.stx_btime.tv_sec : 0;
  uint64_t btime_ns = (stx.stx_mask & STATX_BTIME) ? stx.stx_btime.tv_nsec : 0;
  uint64_t parts[5] = {stx.stx_dev_major, stx.stx_dev_minor, stx.stx_ino, btime_s, btime_ns};
  uint64_t h = 1469598103934665603ull;
  for (int i = 0; i < 5; i++) h = (h ^ parts[i]) * 1099511628211ull;
  return h | 1; /* never 0, which means "not a socket" */
}

/* Whether something listens on the socket file NAME in DIRFD: a stale socket left by a broker that
 * died refuses connections (ECONNREFUSED) and may be replaced; a live one must never be stolen. The
 * connect goes through the directory fd's magic link, so it reaches exactly the file we examined. */
static bool socket_is_live(int dirfd, const char *name, int type) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if ((size_t)snprintf(addr.sun_path, sizeof addr.sun_path, "/proc/self/fd/%d/%s", dirfd, name) >= sizeof addr.sun_path)
    return false; /* cannot name it briefly enough to ask; treat it as stale, as bind would */
  int probe = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (probe < 0) return false;
  int r;
  do r = connect(probe, (struct sockaddr *)&addr, sizeof addr);
  while (r < 0 && errno == EINTR);
  /* EAGAIN: a full backlog, so someone listens; EPROTOTYPE: someone listens with another type. */
  bool live = r == 0 || errno == EAGAIN || errno == EPROTOTYPE;
  close(probe);
  return live;
}

/* listenUnix(path, type, mode, backlog) -> { fd, identity }
 *
 * The socket is bound inside a fresh private directory next to PATH, given its mode there, and only
 * then renamed into place with RENAME_NOREPLACE. So the socket is never reachable with the wrong mode,
 * the process umask is never touched (it is process-wide and other threads create files), and
 * nothing that is not a socket, and no symlink, is ever unlinked or followed at PATH. */
static napi_value js_listen_unix(napi_env env, napi_callback_info info) {
  ARGS(4);
  INT_ARG(1, type);
  UINT_ARG(2, mode);
  INT_ARG(3, backlog);
  char path[PATH_MAX], dir[PATH_MAX], tmpl[PATH_MAX], bindpath[64];
  const char *base;
  int r = arg_path(env, argv[0], path, sizeof path, NULL);
  if (r) return throw_errno(env, -r, "bind");
  if ((r = split_path(path, dir, sizeof dir, &base))) return throw_errno(env, -r, "bind");

  int dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (dirfd < 0) return throw_errno(env, errno, "open");
  struct stat st;
  if (fstatat(dirfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      close(dirfd);
      return throw_errno(env, EEXIST, "bind (path exists and is not a socket)");
    }
    if (socket_is_live(dirfd, base, type)) {
      close(dirfd);
      return throw_errno(env, EADDRINUSE, "bind (another process is listening on this socket)");
    }
    if (unlinkat(dirfd, base, 0) < 0 && errno != ENOENT) {
      int e = errno;
      close(dirfd);
      return throw_errno(env, e, "unlink");
    }
  }

  if ((size_t)snprintf(tmpl, sizeof tmpl, "%s/.openhook-XXXXXX", dir) >= sizeof tmpl) {
    close(dirfd);
    return throw_errno(env, ENAMETOOLONG, "bind");
  }
  if (!mkdtemp(tmpl)) {
    int e = errno;
    close(dirfd);
    return throw_errno(env, e, "mkdtemp");
  }
  int tmpfd = open(tmpl, O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
  int fd = -1, err = 0;
  uint64_t identity = 0;
  const char *failed = NULL;
  if (tmpfd < 0) {
    err = errno, failed = "open";
    goto out;
  }
  fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    err = errno, failed = "socket";
    goto out;
  }
  /* Bind through the directory fd's magic link: the private path is short whatever PATH's length. */
  snprintf(bindpath, sizeof bindpath, "/proc/self/fd/%d/s", tmpfd);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  memcpy(addr.sun_path, bindpath, strlen(bindpath) + 1);
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    err = errno, failed = "bind";
    goto out;
  }
  if (fchmodat(tmpfd, "s", mode & 07777, 0) < 0) {
    err = errno, failed = "chmod";
    goto out;
  }
  identity = file_identity(tmpfd, "s");
  if (syscall(SYS_renameat2, tmpfd, "s", dirfd, base, RENAME_NOREPLACE) < 0) {
    err = errno, failed = "rename";
    goto out;
  }
  if (listen(fd, backlog) < 0) {
    err = errno, failed = "listen";
    unlinkat(dirfd, base, 0);
    goto out;
  }
out:
  if (err && tmpfd >= 0) unlinkat(tmpfd, "s", 0);
  rmdir(tmpl);
  if (tmpfd >= 0) close(tmpfd);
  close(dirfd);
  if (err) {
    if (fd >= 0) close(fd);
    return throw_errno(env, err, failed);
  }
  napi_value out;
  CHECK(napi_create_object(env, &out));
  napi_set_named_property(env, out, "fd", make_int(env, fd));
  napi_value identity_value;
  napi_create_bigint_uint64(env, identity, &identity_value);
  napi_set_named_property(env, out, "identity", identity_value);
  return out;
}

/* unlinkSocket(path, identity) -> boolean: removes PATH only if it is still the socket we bound, so
 * that a broker never removes a socket that another broker (or systemd) put there since. */
static napi_value js_unlink_socket(napi_env env, napi_callback_info info) {
  ARGS(2);
  char path[PATH_MAX];
  int r = arg_path(env, argv[0], path, sizeof path, NULL);
  if (r) return throw_errno(env, -r, "unlink");
  uint64_t identity;
  bool lossless;
  if (napi_get_value_bigint_uint64(env, argv[1], &identity, &lossless) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "identity must be a bigint");
    return NULL;
  }
  bool removed = identity != 0 && file_identity(AT_FDCWD, path) == identity && unlink(path) == 0;
  napi_value out;
  napi_get_boolean(env, removed, &out);
  return out;
}

/* connectUnix(path, type) -> fd. Non-blocking; EAGAIN (backlog full) is thrown for the caller to
 * retry, so that a busy broker never blocks the event loop. */
static napi_value js_connect_unix(napi_env env, napi_callback_info info) {
  ARGS(2);
  INT_ARG(1, type);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  size_t len;
  int r = arg_path(env, argv[0], addr.sun_path, sizeof addr.sun_path, &len);
  if (r) return throw_errno(env, -r, "connect");
  int fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return throw_errno(env, errno, "socket");
  while (connect(fd, (struct sockaddr *)&addr, offsetof(struct sockaddr_un, sun_path) + len + 1) < 0) {
    if (errno == EINTR) continue;
    int e = errno;
    close(fd);
    return throw_errno(env, e, "connect");
  }
  return make_int(env, fd);
}

static int get_buffer(napi_env env, napi_value v, uint8_t **data, size_t *len);

/* A UNIX socket address from a path argument. A leading '@' names an abstract address (as systemd
 * writes them in NOTIFY_SOCKET): the '@' becomes the NUL byte and the length counts no trailing NUL. */
static int unix_address(napi_env env, napi_value v, struct sockaddr_un *addr, socklen_t *addrlen) {
  size_t len;
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  int r = arg_path(env, v, addr->sun_path, sizeof addr->sun_path, &len);
  if (r) return r;
  if (len == 0) return -EINVAL;
  if (addr->sun_path[0] == '@') {
    addr->sun_path[0] = 0;
    *addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
  } else {
    *addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
  }
  return 0;
}

/* sendDatagram(address, buf) -> bytes sent or -errno. One SOCK_DGRAM message to a UNIX address, from
 * a fresh socket: what sd_notify does, and all that NOTIFY_SOCKET needs. Never blocks. */
static napi_value js_send_datagram(napi_env env, napi_callback_info info) {
  ARGS(2);
  struct sockaddr_un addr;
  socklen_t addrlen;
  int r = unix_address(env, argv[0], &addr, &addrlen);
  if (r) return make_int(env, r);
  uint8_t *data;
  size_t len;
  if (get_buffer(env, argv[1], &data, &len)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "buf must be a Buffer");
    return NULL;
  }
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return make_int(env, -errno);
  ssize_t n;
  do n = sendto(fd, data, len, MSG_NOSIGNAL, (struct sockaddr *)&addr, addrlen);
  while (n < 0 && errno == EINTR);
  int e = errno;
  close(fd);
  return make_int(env, n < 0 ? -e : n);
}

/* socketInfo(fd) -> { domain, type, listening, path }: what an inherited fd is, so that a socket
 * handed over by systemd is used only if it is what the broker expects. path is the bound UNIX
 * address ('@...' for abstract, '' for none or another family). Throws ENOTSOCK and friends. */
static napi_value js_socket_info(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, fd);
  int domain = 0, type = 0, listening = 0;
  socklen_t len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0) return throw_errno(env, errno, "getsockopt");
  len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) return throw_errno(env, errno, "getsockopt");
  len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0) return throw_errno(env, errno, "getsockopt");
  struct sockaddr_un addr;
  socklen_t addrlen = sizeof addr;
  size_t pathlen = 0;
  memset(&addr, 0, sizeof addr);
  if (domain == AF_UNIX && getsockname(fd, (struct sockaddr *)&addr, &addrlen) == 0 &&
      addrlen > offsetof(struct sockaddr_un, sun_path)) {
    pathlen = addrlen - offsetof(struct sockaddr_un, sun_path);
    if (addr.sun_path[0] == 0) addr.sun_path[0] = '@';
    else pathlen = strnlen(addr.sun_path, pathlen);
  }
  napi_value out, path;
  CHECK(napi_create_object(env, &out));
  napi_set_named_property(env, out, "domain", make_int(env, domain));
  napi_set_named_property(env, out, "type", make_int(env, type));
  napi_value b;
  napi_get_boolean(env, listening != 0, &b);
  napi_set_named_property(env, out, "listening", b);
  /* latin1: one char per byte, the byte-string form the TypeScript side uses for paths */
  napi_create_string_latin1(env, addr.sun_path, pathlen, &path);
  napi_set_named_property(env, out, "path", path);
  return out;
}

/* setNonblockCloexec(fd): for an inherited socket, which arrives blocking and inheritable. */
static napi_value js_set_nonblock_cloexec(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, fd);
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return throw_errno(env, errno, "fcntl");
  int fdfl = fcntl(fd, F_GETFD);
  if (fdfl < 0 || fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) < 0) return throw_errno(env, errno, "fcntl");
  return NULL;
}

/* receiveQueued(fd) -> bytes waiting in the receive queue (SIOCINQ), or -errno. A stopping broker
 * closes a connection only once nothing it was sent is left unread. */
static napi_value js_receive_queued(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, fd);
  int n = 0;
  if (ioctl(fd, SIOCINQ, &n) < 0) return make_int(env, -errno);
  return make_int(env, n);
}

/* peerClosed(fd) -> 1 if the peer has closed the socket (both directions shut: POLLHUP), 0 if it is
 * still there (perhaps having shut only its writing), or -errno. */
static napi_value js_peer_closed(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, fd);
  struct pollfd p = {.fd = fd, .events = 0};
  int r;
  do r = poll(&p, 1, 0);
  while (r < 0 && errno == EINTR);
  if (r < 0) return make_int(env, -errno);
  return make_int(env, (p.revents & POLLHUP) ? 1 : 0);
}

/* accept(fd) -> fd, or -errno (-EAGAIN when nothing is pending). */
static napi_value js_accept(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, lfd);
  int fd;
  do fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  while (fd < 0 && errno == EINTR);
  return make_int(env, fd < 0 ? -errno : fd);
}

static int get_buffer(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  bool ok = false;
  napi_is_buffer(env, v, &ok);
  if (ok) return napi_get_buffer_info(env, v, (void **)data, len) == napi_ok ? 0 : -1;
  napi_is_typedarray(env, v, &ok);
  if (!ok) return -1;
  napi_typedarray_type t;
  size_t n, off;
  napi_value ab;
  if (napi_get_typedarray_info(env, v, &t, &n, (void **)data, &ab, &off) != napi_ok) return -1;
  size_t width = t == napi_int32_array || t == napi_uint32_array || t == napi_float32_array ? 4
               : t == napi_int16_array || t == napi_uint16_array ? 2
               : t == napi_float64_array || t == napi_bigint64_array || t == napi_biguint64_array ? 8 : 1;
  *len = n * width;
  return 0;
}

/* send(fd, buf, offset, length, passFd) -> bytes sent or -errno. passFd < 0 sends no fd.
 * MSG_NOSIGNAL: a client that hung up must never kill the broker with SIGPIPE. */
/* Attaches n fds to m as one SCM_RIGHTS message, in ctl (CMSG_SPACE(n ints), suitably aligned). */
static void attach_fds(struct msghdr *m, void *ctl, const int *fds, size_t n) {
  memset(ctl, 0, CMSG_SPACE(sizeof(int) * n));
  m->msg_control = ctl;
  m->msg_controllen = CMSG_SPACE(sizeof(int) * n);
  struct cmsghdr *c = CMSG_FIRSTHDR(m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * n);
  memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
}

static napi_value js_send(napi_env env, napi_callback_info info) {
  ARGS(5);
  INT_ARG(0, fd);
  uint8_t *data;
  size_t cap;
  if (get_buffer(env, argv[1], &data, &cap)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "buf must be a Buffer");
    return NULL;
  }
  UINT_ARG(2, offset);
  UINT_ARG(3, length);
  INT_ARG(4, pass_fd);
  if ((size_t)offset + length > cap) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "offset + length exceeds the buffer");
    return NULL;
  }
  struct iovec iov = {data + offset, length};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } ctl;
  if (pass_fd >= 0) attach_fds(&m, ctl.buf, &pass_fd, 1);
  ssize_t n;
  do n = sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  return make_int(env, n < 0 ? -errno : n);
}

/* sendFds(fd, buf, fds[]) -> bytes sent or -errno: several fds with one message, as QMP's add-fd
 * and getfd need. */
static napi_value js_send_fds(napi_env env, napi_callback_info info) {
  ARGS(3);
  INT_ARG(0, fd);
  uint8_t *data;
  size_t len;
  if (get_buffer(env, argv[1], &data, &len)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "buf must be a Buffer");
    return NULL;
  }
  uint32_t nfds = 0;
  napi_get_array_length(env, argv[2], &nfds);
  if (nfds > MAX_FDS_PER_MSG) return throw_errno(env, EINVAL, "sendmsg");
  int fds[MAX_FDS_PER_MSG];
  for (uint32_t i = 0; i < nfds; i++) {
    napi_value v;
    napi_get_element(env, argv[2], i, &v);
    if (arg_int(env, v, &fds[i])) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "fds must be integers");
      return NULL;
    }
  }
  struct iovec iov = {data, len};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MSG)];
    struct cmsghdr align;
  } ctl;
  if (nfds) attach_fds(&m, ctl.buf, fds, nfds);
  ssize_t n;
  do n = sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  return make_int(env, n < 0 ? -errno : n);
}

/* ---- the reply batch ---------------------------------------------------------------------------
 * Replies to one wake-up's requests leave together: JS writes them into a batch area shared with
 * us (registered once with setReplyArena: bytes, and an Int32 index of [offset, length, fd] per
 * reply), then sendReplies(sock, count) sends them with one sendmmsg, each with its fd as
 * SCM_RIGHTS, and closes the broker's copy of every fd that went out. One call into C and one
 * syscall per wake-up instead of a send and a close per request. */
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

/* ---- peer credentials ------------------------------------------------------------------------- */

static napi_value js_peer_cred(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, fd);
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return throw_errno(env, errno, "getsockopt");
  napi_value out;
  CHECK(napi_create_object(env, &out));
  napi_set_named_property(env, out, "pid", make_int(env, cred.pid));
  napi_set_named_property(env, out, "uid", make_int(env, cred.uid));
  napi_set_named_property(env, out, "gid", make_int(env, cred.gid));
  return out;
}

/* peerGroups(fd) -> number[] | null (null: the kernel has no SO_PEERGROUPS) */
static napi_value js_peer_groups(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, fd);
  gid_t small[64], *groups = small;
  socklen_t len = sizeof small;
  int r = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len);
  if (r < 0 && errno == ERANGE) {
    groups = malloc(len);
    if (!groups) return throw_errno(env, ENOMEM, "malloc");
    r = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len);
  }
  napi_value out = NULL;
  if (r < 0) {
    int e = errno;
    if (groups != small) free(groups);
    if (e == ENOPROTOOPT) {
      napi_get_null(env, &out);
      return out;
    }
    return throw_errno(env, e, "getsockopt");
  }
  size_t n = len / sizeof(gid_t);
  napi_create_array_with_length(env, n, &out);
  for (size_t i = 0; i < n; i++) napi_set_element(env, out, (uint32_t)i, make_int(env, groups[i]));
  if (groups != small) free(groups);
  return out;
}

/* peerPidfd(fd) -> pidfd, or -errno (-ENOPROTOOPT before Linux 6.5) */
static napi_value js_peer_pidfd(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, fd);
  int pidfd = -1;
  socklen_t len = sizeof pidfd;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) < 0) return make_int(env, -errno);
  fcntl(pidfd, F_SETFD, FD_CLOEXEC);
  return make_int(env, pidfd);
}

static napi_value js_socket_type(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, fd);
  int type = 0;
  socklen_t len = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) return make_int(env, -errno);
  return make_int(env, type);
}

/* ---- files ------------------------------------------------------------------------------------ */

static int sys_openat2(int dirfd, const char *path, uint32_t flags, uint32_t mode, uint32_t resolve) {
  struct open_how how = {.flags = flags, .mode = (flags & (O_CREAT | __O_TMPFILE)) ? mode : 0, .resolve = resolve};
  long fd;
  do fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
  while (fd < 0 && errno == EINTR);
  return fd < 0 ? -errno : (int)fd;
}

/* /proc/self/fd as a directory fd, opened once and checked to be procfs: reopening "N" beneath it
 * costs one lookup instead of four, and a /proc that is later unmounted or covered cannot redirect
 * a reopen. /proc/self names the process, not the thread, so pool threads use it too. */
static int proc_fd_dir = -1;

static int proc_fd_dir_get(void) {
  if (proc_fd_dir >= 0) return proc_fd_dir;
  int fd = open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -errno;
  struct statfs sfs;
  if (fstatfs(fd, &sfs) < 0 || sfs.f_type != PROC_SUPER_MAGIC) {
    close(fd);
    return -ENOENT;
  }
  proc_fd_dir = fd;
  return fd;
}

/* Opens exactly the inode that an O_PATH fd holds, with real flags: the one race-free way to open
 * what was resolved and checked. Flags that concern lookup or creation are dropped (O_NOFOLLOW would
 * refuse the magic link itself). */
static int reopen_fd(int fd, uint32_t flags) {
  int dir = proc_fd_dir;
  if (dir < 0) return -ENOENT;
  char name[16];
  int i = sizeof name - 1;
  name[i] = 0;
  unsigned v = (unsigned)fd;
  do name[--i] = (char)('0' + v % 10), v /= 10;
  while (v && i > 0);
  int out;
  do out = openat(dir, name + i, (int)(flags & ~(O_CREAT | O_EXCL | O_NOFOLLOW | O_PATH)));
  while (out < 0 && errno == EINTR);
  return out < 0 ? -errno : out;
}

/* O_PATH lookup and the facts the resolver checks before any I/O: the fd, or -errno. */
static int lookup_fd(int dirfd, const char *path, uint32_t flags, uint32_t resolve, struct stat *st) {
  int fd = sys_openat2(dirfd, path, flags, 0, resolve);
  if (fd < 0) return fd;
  if (fstat(fd, st) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

/* Creates with openat2 (the caller passes O_CREAT|O_EXCL), then sets the mode explicitly: the
 * process umask is process-wide state that the broker neither reads nor trusts, so the created file
 * gets exactly the mode the resolver computed. */
static int create_fd(int dirfd, const char *path, uint32_t flags, uint32_t mode, uint32_t resolve) {
  int fd = sys_openat2(dirfd, path, flags, mode, resolve);
  if (fd >= 0) fchmod(fd, mode & 07777); /* a failure leaves the stricter umask-reduced mode */
  return fd;
}

static void stat_out(double *out, const struct stat *st) {
  out[0] = st->st_mode, out[1] = (double)st->st_nlink, out[2] = st->st_uid, out[3] = st->st_gid;
  out[4] = (double)st->st_size, out[5] = (double)st->st_rdev, out[6] = (double)st->st_dev, out[7] = (double)st->st_ino;
}

static double *arg_stat_array(napi_env env, napi_value v, size_t min) {
  napi_typedarray_type t;
  size_t n, off;
  double *out;
  napi_value ab;
  if (napi_get_typedarray_info(env, v, &t, &n, (void **)&out, &ab, &off) != napi_ok || t != napi_float64_array || n < min) {
    char why[64];
    snprintf(why, sizeof why, "out must be a Float64Array of %zu", min);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", why);
    return NULL;
  }
  return out;
}

/* openat2(dirfd, path, flags, mode, resolve) -> fd or -errno. */
static napi_value js_openat2(napi_env env, napi_callback_info info) {
  ARGS(5);
  INT_ARG(0, dirfd);
  UINT_ARG(2, flags);
  UINT_ARG(3, mode);
  UINT_ARG(4, resolve);
  PATH_ARG(1, path);
  return make_int(env, sys_openat2(dirfd, path, flags, mode, resolve));
}

/* lookup(dirfd, path, flags, resolve, out: Float64Array(8)) -> fd or -errno: openat2 (the caller
 * passes O_PATH) and fstat of the result in one call; out as for fstat. */
static napi_value js_lookup(napi_env env, napi_callback_info info) {
  ARGS(5);
  INT_ARG(0, dirfd);
  UINT_ARG(2, flags);
  UINT_ARG(3, resolve);
  double *out = arg_stat_array(env, argv[4], 8);
  if (!out) return NULL;
  PATH_ARG(1, path);
  struct stat st;
  int fd = lookup_fd(dirfd, path, flags, resolve, &st);
  if (fd >= 0) stat_out(out, &st);
  return make_int(env, fd);
}

/* openFile(dirfd, path, pathFlags, resolve, ioFlags, out: Float64Array(9)) -> fd or -errno: the
 * resolver's lookup, and for the one case it always allows, the reopen too, in one call.
 *
 * It resolves with openat2 (pathFlags must hold O_PATH) and fstats what it found (out[0..7] as for
 * fstat). Only if that is a regular file with a single link, and ioFlags do not ask for a directory,
 * does it reopen the inode with ioFlags through /proc/self/fd and close the O_PATH fd: it returns
 * the open file, and out[8] = 1. Anything else (a directory, a FIFO, a device, a socket, a symlink,
 * a file with several links) is never opened here: it returns the O_PATH fd, out[8] = 0, and the
 * resolver decides in TypeScript, as it does after lookup(). So the type check never weakens, and
 * the common case costs one crossing instead of three. */
static napi_value js_open_file(napi_env env, napi_callback_info info) {
  ARGS(6);
  INT_ARG(0, dirfd);
  UINT_ARG(2, flags);
  UINT_ARG(3, resolve);
  UINT_ARG(4, io_flags);
  double *out = arg_stat_array(env, argv[5], 9);
  if (!out) return NULL;
  if (!(flags & O_PATH)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "openFile resolves with O_PATH only");
    return NULL;
  }
  PATH_ARG(1, path);
  struct stat st;
  int fd = lookup_fd(dirfd, path, flags, resolve, &st);
  out[8] = 0;
  if (fd < 0) return make_int(env, fd);
  stat_out(out, &st);
  if (!S_ISREG(st.st_mode) || st.st_nlink != 1 || (io_flags & O_DIRECTORY)) return make_int(env, fd);
  if (proc_fd_dir < 0) proc_fd_dir_get();
  int file = reopen_fd(fd, io_flags);
  close(fd);
  out[8] = 1;
  return make_int(env, file);
}

/* create(dirfd, path, flags, mode, resolve) -> fd or -errno: openat2 with O_CREAT, then fchmod to
 * exactly mode. */
static napi_value js_create(napi_env env, napi_callback_info info) {
  ARGS(5);
  INT_ARG(0, dirfd);
  UINT_ARG(2, flags);
  UINT_ARG(3, mode);
  UINT_ARG(4, resolve);
  PATH_ARG(1, path);
  return make_int(env, create_fd(dirfd, path, flags, mode, resolve));
}

/* open(path, flags, mode) -> fd or -errno: for set-up (rule roots), never for client requests. */
static napi_value js_open(napi_env env, napi_callback_info info) {
  ARGS(3);
  UINT_ARG(1, flags);
  UINT_ARG(2, mode);
  PATH_ARG(0, path);
  int fd;
  do fd = open(path, (int)flags | O_CLOEXEC, mode);
  while (fd < 0 && errno == EINTR);
  return make_int(env, fd < 0 ? -errno : fd);
}

/* reopen(fd, flags) -> fd or -errno. Turns an O_PATH fd into an open file description through
 * /proc/self/fd (see reopen_fd). */
static napi_value js_reopen(napi_env env, napi_callback_info info) {
  ARGS(2);
  INT_ARG(0, fd);
  UINT_ARG(1, flags);
  int dir = proc_fd_dir_get();
  if (dir < 0) return make_int(env, dir);
  return make_int(env, reopen_fd(fd, flags));
}

/* fstat(fd, out: Float64Array(8)) -> 0 or -errno.
 * out = [mode, nlink, uid, gid, size, rdev, dev, ino]; dev and ino are exact below 2^53. */
static napi_value js_fstat(napi_env env, napi_callback_info info) {
  ARGS(2);
  INT_ARG(0, fd);
  double *out = arg_stat_array(env, argv[1], 8);
  if (!out) return NULL;
  struct stat st;
  if (fstat(fd, &st) < 0) return make_int(env, -errno);
  stat_out(out, &st);
  return make_int(env, 0);
}

/* ---- slow opens: a small pool of threads ------------------------------------------------------
 * An open that may block (a network or FUSE filesystem, a FIFO) runs here, off the event loop. Each
 * job is one of the resolver's steps (lookup, create, reopen); the resolver in TypeScript chains
 * them, so the logic stays there. Threads start on demand up to a maximum and block every signal, so
 * that Node's signal handling is undisturbed. Results come back through one uv_async_t, and each one
 * calls callback(id, result, statMode, statNlink). A job that finishes after close() has its fd
 * closed here. */
enum { JOB_LOOKUP = 1, JOB_CREATE = 2, JOB_REOPEN = 3, JOB_STATFS = 4, JOB_CLOSE = 5 };

typedef struct job {
  struct job *next;
  uint32_t id;
  int op, dirfd;
  uint32_t flags, mode, resolve;
  int result;
  double st_mode, st_nlink;
  char path[];
} job_t;

typedef struct {
  napi_env env;
  napi_ref callback_ref;
  napi_async_context async_ctx;
  uv_async_t async;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  job_t *queue, *queue_tail, *done, *done_tail;
  int threads, idle, max_threads, queued, max_queued;
  unsigned pending; /* submitted and not yet delivered; event loop thread only */
  bool closed, handle_closed, finalized; /* freed once no thread, no uv handle and no JS object needs it */
} pool_t;

static void pool_free(pool_t *p) {
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  free(p);
}

static bool job_makes_fd(const job_t *j) {
  return j->op == JOB_LOOKUP || j->op == JOB_CREATE || j->op == JOB_REOPEN;
}

static void job_run(job_t *j) {
  struct stat st;
  switch (j->op) {
    case JOB_LOOKUP:
      j->result = lookup_fd(j->dirfd, j->path, j->flags, j->resolve, &st);
      if (j->result >= 0) j->st_mode = st.st_mode, j->st_nlink = (double)st.st_nlink;
      break;
    case JOB_CREATE:
      j->result = create_fd(j->dirfd, j->path, j->flags, j->mode, j->resolve);
      break;
    case JOB_REOPEN:
      j->result = reopen_fd(j->dirfd, j->flags);
      break;
    case JOB_STATFS: { /* the magic number comes back as statMode (an unsigned value) */
      struct statfs sfs;
      int r;
      do r = fstatfs(j->dirfd, &sfs);
      while (r < 0 && errno == EINTR);
      j->result = r < 0 ? -errno : 0;
      if (r == 0) j->st_mode = (double)(uint32_t)sfs.f_type;
      break;
    }
    case JOB_CLOSE: /* close() may wait: FUSE sends FLUSH, NFS may write back */
      j->result = close(j->dirfd) < 0 ? -errno : 0;
      break;
    default:
      j->result = -EINVAL;
  }
}

static void *pool_thread(void *arg) {
  pool_t *p = arg;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->queue && !p->closed) {
      p->idle++;
      pthread_cond_wait(&p->cv, &p->mu);
      p->idle--;
    }
    if (p->closed) break;
    job_t *j = p->queue;
    p->queue = j->next;
    if (!p->queue) p->queue_tail = NULL;
    p->queued--;
    pthread_mutex_unlock(&p->mu);
    job_run(j);
    pthread_mutex_lock(&p->mu);
    if (p->closed) {
      if (j->result >= 0 && job_makes_fd(j)) close(j->result);
      free(j);
      break;
    }
    j->next = NULL;
    if (p->done_tail) p->done_tail->next = j;
    else p->done = j;
    p->done_tail = j;
    uv_async_send(&p->async); /* only while not closed: close() sets closed before uv_close */
  }
  bool last = --p->threads == 0 && p->handle_closed && p->finalized;
  pthread_mutex_unlock(&p->mu);
  if (last) pool_free(p);
  return NULL;
}

static void pool_deliver(uv_async_t *h) {
  pool_t *p = h->data;
  pthread_mutex_lock(&p->mu);
  job_t *j = p->done;
  p->done = p->done_tail = NULL;
  pthread_mutex_unlock(&p->mu);
  napi_env env = p->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb = NULL, recv, args[4], result;
  if (p->callback_ref) napi_get_reference_value(env, p->callback_ref, &cb);
  napi_get_global(env, &recv);
  while (j) {
    job_t *next = j->next;
    p->pending--;
    if (cb && !p->closed) {
      napi_create_uint32(env, j->id, &args[0]);
      napi_create_int32(env, j->result, &args[1]);
      napi_create_double(env, j->st_mode, &args[2]);
      napi_create_double(env, j->st_nlink, &args[3]);
      napi_status s = napi_make_callback(env, p->async_ctx, recv, cb, 4, args, &result);
      if (s == napi_pending_exception) {
        napi_value exc;
        napi_get_and_clear_last_exception(env, &exc);
        napi_fatal_exception(env, exc);
      }
    } else if (j->result >= 0 && job_makes_fd(j)) {
      close(j->result);
    }
    free(j);
    j = next;
  }
  if (p->pending == 0 && !p->closed) uv_unref((uv_handle_t *)&p->async);
  napi_close_handle_scope(env, scope);
}

static void pool_handle_closed(uv_handle_t *h) {
  pool_t *p = h->data;
  pthread_mutex_lock(&p->mu);
  p->handle_closed = true;
  bool last = p->threads == 0 && p->finalized;
  pthread_mutex_unlock(&p->mu);
  if (last) pool_free(p);
}

static void pool_close(napi_env env, pool_t *p) {
  if (p->closed) return;
  pthread_mutex_lock(&p->mu);
  p->closed = true;
  job_t *q = p->queue, *d = p->done;
  p->queue = p->queue_tail = p->done = p->done_tail = NULL;
  p->queued = 0;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  while (q) { job_t *n = q->next; if (q->op == JOB_CLOSE) close(q->dirfd); free(q); q = n; }
  while (d) { job_t *n = d->next; if (d->result >= 0 && job_makes_fd(d)) close(d->result); free(d); d = n; }
  napi_async_destroy(env, p->async_ctx);
  napi_delete_reference(env, p->callback_ref);
  p->callback_ref = NULL;
  uv_close((uv_handle_t *)&p->async, pool_handle_closed);
}

static void pool_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  pool_t *p = data;
  pool_close(env, p);
  pthread_mutex_lock(&p->mu);
  p->finalized = true;
  bool last = p->threads == 0 && p->handle_closed;
  pthread_mutex_unlock(&p->mu);
  if (last) pool_free(p);
}

static pool_t *unwrap_pool(napi_env env, napi_value self) {
  pool_t *p = NULL;
  napi_unwrap(env, self, (void **)&p);
  if (!p || p->closed) {
    napi_throw_error(env, "ERR_POOL_CLOSED", "pool is closed");
    return NULL;
  }
  return p;
}

/* new OpenPool(maxThreads, maxQueued, callback) */
static napi_value pool_new(napi_env env, napi_callback_info info) {
  ARGS(3);
  INT_ARG(0, max_threads);
  INT_ARG(1, max_queued);
  pool_t *p = calloc(1, sizeof *p);
  if (!p) return throw_errno(env, ENOMEM, "calloc");
  p->env = env;
  p->max_threads = max_threads > 0 ? max_threads : 1;
  p->max_queued = max_queued > 0 ? max_queued : 1;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  int r = uv_async_init(loop, &p->async, pool_deliver);
  if (r < 0) {
    pool_free(p);
    return throw_errno(env, -r, "uv_async_init");
  }
  p->async.data = p;
  uv_unref((uv_handle_t *)&p->async);
  napi_value name;
  napi_create_string_utf8(env, "openhook:pool", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, self, name, &p->async_ctx);
  napi_create_reference(env, argv[2], 1, &p->callback_ref);
  napi_wrap(env, self, p, pool_finalize, NULL, NULL);
  return self;
}

/* submit(id, op, dirfd, path, flags, mode, resolve) -> 0, or -EAGAIN when the queue is full, or
 * another -errno (a bad path, no thread could start). */
static napi_value pool_submit(napi_env env, napi_callback_info info) {
  ARGS(7);
  UINT_ARG(0, id);
  INT_ARG(1, op);
  INT_ARG(2, dirfd);
  UINT_ARG(4, flags);
  UINT_ARG(5, mode);
  UINT_ARG(6, resolve);
  pool_t *p = unwrap_pool(env, self);
  if (!p) return NULL;
  char path[PATH_MAX];
  size_t len = 0;
  path[0] = 0;
  if (op == JOB_LOOKUP || op == JOB_CREATE) {
    int r = arg_path(env, argv[3], path, sizeof path, &len);
    if (r) return make_int(env, r);
  } else if (op == JOB_REOPEN) {
    int r = proc_fd_dir_get();
    if (r < 0) return make_int(env, r);
  }
  pthread_mutex_lock(&p->mu);
  bool full = p->queued >= p->max_queued && op != JOB_CLOSE; /* a close is never refused: it would leak */
  pthread_mutex_unlock(&p->mu);
  if (full) return make_int(env, -EAGAIN);
  job_t *j = malloc(sizeof *j + len + 1);
  if (!j) return make_int(env, -ENOMEM);
  *j = (job_t){.id = id, .op = op, .dirfd = dirfd, .flags = flags, .mode = mode, .resolve = resolve, .result = -EINVAL};
  memcpy(j->path, path, len + 1);
  pthread_mutex_lock(&p->mu);
  if (p->idle == 0 && p->threads < p->max_threads) {
    pthread_t t;
    pthread_attr_t attr;
    sigset_t all, old;
    sigfillset(&all);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the new thread inherits a mask that blocks all */
    int r = pthread_create(&t, &attr, pool_thread, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (r == 0) p->threads++;
    else if (p->threads == 0) {
      pthread_mutex_unlock(&p->mu);
      free(j);
      return make_int(env, -r);
    }
  }
  if (p->queue_tail) p->queue_tail->next = j;
  else p->queue = j;
  p->queue_tail = j;
  p->queued++;
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
  if (p->pending++ == 0) uv_ref((uv_handle_t *)&p->async);
  return make_int(env, 0);
}

/* stats() -> [threads, idle, queued, pending] */
static napi_value pool_stats(napi_env env, napi_callback_info info) {
  napi_value self;
  CHECK(napi_get_cb_info(env, info, NULL, NULL, &self, NULL));
  pool_t *p = unwrap_pool(env, self);
  if (!p) return NULL;
  pthread_mutex_lock(&p->mu);
  int v[4] = {p->threads, p->idle, p->queued, (int)p->pending};
  pthread_mutex_unlock(&p->mu);
  napi_value out;
  napi_create_array_with_length(env, 4, &out);
  for (int i = 0; i < 4; i++) napi_set_element(env, out, i, make_int(env, v[i]));
  return out;
}

static napi_value pool_close_js(napi_env env, napi_callback_info info) {
  napi_value self;
  CHECK(napi_get_cb_info(env, info, NULL, NULL, &self, NULL));
  pool_t *p = NULL;
  napi_unwrap(env, self, (void **)&p);
  if (p) pool_close(env, p);
  return NULL;
}

/* dup(fd) -> a new fd (close-on-exec) for the same open file, or -errno: a slow open holds its own
 * reference to its rule's root, so that a policy reload closing the root cannot leave it a number
 * that some other open has since been given. */
static napi_value js_dup(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, fd);
  int out = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  return make_int(env, out < 0 ? -errno : out);
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, fd);
  /* Never retry close on EINTR: on Linux the fd is gone either way. */
  return make_int(env, close(fd) < 0 ? -errno : 0);
}

/* ---- module ----------------------------------------------------------------------------------- */

static void set_int(napi_env env, napi_value obj, const char *name, int64_t v) {
  napi_set_named_property(env, obj, name, make_int(env, v));
}

static napi_value init(napi_env env, napi_value exports) {
  /* The receive arena, the reply batch and the busy poll are one per process and serve the main
   * thread's loop: a worker thread that loaded the addon would take them from the broker. Only the
   * main thread runs the default loop; this check costs nothing, where node:worker_threads' own
   * isMainThread costs a few milliseconds of start-up to load. */
  uv_loop_t *loop = NULL;
  napi_get_uv_event_loop(env, &loop);
  if (loop != uv_default_loop()) {
    napi_throw_error(env, "ERR_OPENHOOK_THREAD", "the openhook addon must not be loaded in a worker thread: it serves the main thread only");
    return NULL;
  }
  napi_property_descriptor fns[] = {
#define FN(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_default, NULL}
    FN("socket", js_socket),
    FN("socketpair", js_socketpair),
    FN("listenUnix", js_listen_unix),
    FN("unlinkSocket", js_unlink_socket),
    FN("connectUnix", js_connect_unix),
    FN("accept", js_accept),
    FN("send", js_send),
    FN("sendFds", js_send_fds),
    FN("setReplyArena", js_set_reply_arena),
    FN("sendReplies", js_send_replies),
    FN("setBusyPoll", js_set_busy_poll),
    FN("sendBufferSize", js_send_buffer_size),
    FN("sendQueued", js_send_queued),
    FN("setRecvArena", js_set_recv_arena),
    FN("peerCred", js_peer_cred),
    FN("peerGroups", js_peer_groups),
    FN("peerPidfd", js_peer_pidfd),
    FN("socketType", js_socket_type),
    FN("socketInfo", js_socket_info),
    FN("setNonblockCloexec", js_set_nonblock_cloexec),
    FN("receiveQueued", js_receive_queued),
    FN("peerClosed", js_peer_closed),
    FN("sendDatagram", js_send_datagram),
    FN("openat2", js_openat2),
    FN("open", js_open),
    FN("lookup", js_lookup),
    FN("openFile", js_open_file),
    FN("create", js_create),
    FN("reopen", js_reopen),
    FN("fstat", js_fstat),
    FN("dup", js_dup),
    FN("close", js_close),
#undef FN
  };
  napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns);

  napi_property_descriptor methods[] = {
    {"start", NULL, poller_start, NULL, NULL, NULL, napi_default, NULL},
    {"ref", NULL, poller_ref, NULL, NULL, NULL, napi_default, NULL},
    {"close", NULL, poller_close_js, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_value poller;
  napi_define_class(env, "Poller", NAPI_AUTO_LENGTH, poller_new, NULL, 3, methods, &poller);
  napi_set_named_property(env, exports, "Poller", poller);

  napi_property_descriptor pool_methods[] = {
    {"submit", NULL, pool_submit, NULL, NULL, NULL, napi_default, NULL},
    {"stats", NULL, pool_stats, NULL, NULL, NULL, napi_default, NULL},
    {"close", NULL, pool_close_js, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_value pool;
  napi_define_class(env, "OpenPool", NAPI_AUTO_LENGTH, pool_new, NULL, 3, pool_methods, &pool);
  napi_set_named_property(env, exports, "OpenPool", pool);
  proc_fd_dir_get(); /* early, while /proc is surely there; retried on demand if it was not */

  napi_value c;
  napi_create_object(env, &c);
#define K(x) set_int(env, c, #x, x)
  K(SOCK_STREAM); K(SOCK_SEQPACKET); K(SOCK_DGRAM); K(AF_UNIX); K(AF_INET); K(AF_INET6);
  K(O_RDONLY); K(O_WRONLY); K(O_RDWR); K(O_ACCMODE); K(O_CREAT); K(O_EXCL); K(O_NOCTTY); K(O_TRUNC);
  K(O_APPEND); K(O_NONBLOCK); K(O_DSYNC); K(O_SYNC); K(O_DIRECT); K(O_LARGEFILE); K(O_DIRECTORY);
  K(O_NOFOLLOW); K(O_NOATIME); K(O_CLOEXEC); K(O_PATH); K(O_TMPFILE); K(FASYNC);
  K(RESOLVE_NO_XDEV); K(RESOLVE_NO_MAGICLINKS); K(RESOLVE_NO_SYMLINKS); K(RESOLVE_BENEATH);
  K(RESOLVE_IN_ROOT); K(RESOLVE_CACHED);
  K(S_IFMT); K(S_IFREG); K(S_IFDIR); K(S_IFLNK); K(S_IFIFO); K(S_IFSOCK); K(S_IFCHR); K(S_IFBLK);
  K(MSG_TRUNC); K(MSG_CTRUNC);
  K(JOB_LOOKUP); K(JOB_CREATE); K(JOB_REOPEN); K(JOB_STATFS); K(JOB_CLOSE);
  K(UV_READABLE); K(UV_WRITABLE); K(UV_DISCONNECT);
#undef K
  set_int(env, c, "STATUS_EOF", STATUS_EOF);
  set_int(env, c, "FRAME_MAX", FRAME_MAX);
  set_int(env, c, "MAX_FDS_PER_MSG", MAX_FDS_PER_MSG);
  napi_set_named_property(env, exports, "constants", c);
  { void register_notify(napi_env, napi_value); register_notify(env, exports); } /* native/notify.c */
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
