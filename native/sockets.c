/* Sockets: make, listen, connect, accept, send (with fds), and ask a socket what it is and who is at
 * its other end. Calls on the request path return a result or -errno; set-up calls throw. */
#define _GNU_SOURCE
#include "sockets.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/sockios.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "napi.h"
#include "parts.h"

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

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

/* Attaches n fds to m as one SCM_RIGHTS message, in ctl (CMSG_SPACE(n ints), suitably aligned). */
void attach_fds(struct msghdr *m, void *ctl, const int *fds, size_t n) {
  memset(ctl, 0, CMSG_SPACE(sizeof(int) * n));
  m->msg_control = ctl;
  m->msg_controllen = CMSG_SPACE(sizeof(int) * n);
  struct cmsghdr *c = CMSG_FIRSTHDR(m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * n);
  memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
}

/* send(fd, buf, offset, length, passFd) -> bytes sent or -errno. passFd < 0 sends no fd.
 * MSG_NOSIGNAL: a client that hung up must never kill the broker with SIGPIPE. */
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

/* ---- peer credentials ---- */

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

napi_status sockets_register(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
    {"socket", js_socket},
    {"socketpair", js_socketpair},
    {"listenUnix", js_listen_unix},
    {"unlinkSocket", js_unlink_socket},
    {"connectUnix", js_connect_unix},
    {"accept", js_accept},
    {"send", js_send},
    {"sendFds", js_send_fds},
    {"peerCred", js_peer_cred},
    {"peerGroups", js_peer_groups},
    {"peerPidfd", js_peer_pidfd},
    {"socketType", js_socket_type},
    {"socketInfo", js_socket_info},
    {"setNonblockCloexec", js_set_nonblock_cloexec},
    {"receiveQueued", js_receive_queued},
    {"peerClosed", js_peer_closed},
    {"sendDatagram", js_send_datagram},
  };
  EXPORT_CONSTANT(exports, SOCK_STREAM);
  EXPORT_CONSTANT(exports, SOCK_SEQPACKET);
  EXPORT_CONSTANT(exports, SOCK_DGRAM);
  EXPORT_CONSTANT(exports, AF_UNIX);
  EXPORT_CONSTANT(exports, AF_INET);
  EXPORT_CONSTANT(exports, AF_INET6);
  EXPORT_CONSTANT(exports, MSG_TRUNC);
  EXPORT_CONSTANT(exports, MSG_CTRUNC);
  EXPORT_CONSTANT(exports, MAX_FDS_PER_MSG);
  return export_functions(env, exports, fns, COUNT(fns));
}
