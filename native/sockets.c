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
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
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
  BOOL_ARG(1, nonblock);
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
 * Where the filesystem has no birth time, device and inode remain. 0: not a socket, or not there.
 * at_flags: AT_SYMLINK_NOFOLLOW for a name, AT_EMPTY_PATH (name "") for an O_PATH fd. */
static uint64_t file_identity(int dirfd, const char *name, int at_flags) {
  struct statx stx;
  if (statx(dirfd, name, at_flags, STATX_TYPE | STATX_INO | STATX_BTIME, &stx) < 0) return 0;
  if ((stx.stx_mode & S_IFMT) != S_IFSOCK) return 0;
  uint64_t btime_s = (stx.stx_mask & STATX_BTIME) ? (uint64_t)stx.stx_btime.tv_sec : 0;
  uint64_t btime_ns = (stx.stx_mask & STATX_BTIME) ? stx.stx_btime.tv_nsec : 0;
  uint64_t parts[5] = {stx.stx_dev_major, stx.stx_dev_minor, stx.stx_ino, btime_s, btime_ns};
  uint64_t h = 1469598103934665603ull;
  for (int i = 0; i < 5; i++) h = (h ^ parts[i]) * 1099511628211ull;
  return h | 1; /* never 0, which means "not a socket" */
}

/* Whether the socket file that the O_PATH fd FILE holds is dead: no socket at all is bound to it,
 * so that it may be removed. The probe is a SOCK_DGRAM connect through the fd's magic link, so it
 * reaches exactly the file we examined, whatever the length of its path. The kernel finds the
 * socket bound to the inode before it looks at its state: a socket of another type answers
 * EPROTOTYPE even while it is bound and not yet listening (a broker starting at this very moment),
 * a datagram socket accepts, and only a file that no socket holds answers ECONNREFUSED. Our
 * listeners are stream or seqpacket, so a socket bound there never looks dead. Any other answer
 * (EACCES, say) proves nothing, and keeps the file. */
static bool socket_is_dead(int file) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof addr.sun_path, "/proc/self/fd/%d", file);
  int probe = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (probe < 0) return false;
  int r;
  do r = connect(probe, (struct sockaddr *)&addr, sizeof addr);
  while (r < 0 && errno == EINTR);
  bool dead = r < 0 && errno == ECONNREFUSED;
  close(probe);
  return dead;
}

/* Serialises the removal of a dead socket among brokers starting at once: an exclusive flock on the
 * directory, held from the probe to the listen. Advisory, and only between brokers: so that no one
 * who can read the directory can stop a broker from starting by holding the lock, it waits at most
 * a second and then goes on without it (docs/security.md, "The listening socket"). Returns the
 * locked fd, or -1 (no lock: the directory is unreadable, or the wait ran out). */
static int lock_directory(int dirfd) {
  int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -1;
  for (int tries = 0; tries < 100; tries++) {
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) return fd;
    if (errno != EWOULDBLOCK && errno != EINTR) break;
    struct timespec ten_ms = {0, 10 * 1000 * 1000};
    nanosleep(&ten_ms, NULL);
  }
  close(fd);
  return -1;
}

/* What is at NAME in DIRFD, where bind found something: -EEXIST if it is not a socket (a symlink
 * included: it is never followed), -EADDRINUSE if a socket is bound to it, -ENOENT if it went away
 * meanwhile, or 0 once the dead socket that was there has been removed. It is removed only if the
 * name still holds the very file the probe found dead, so that a socket bound since is never taken. */
static int remove_dead_socket(int dirfd, const char *name) {
  int file = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (file < 0) return -errno;
  struct stat st;
  int r = fstat(file, &st) < 0 ? -errno : !S_ISSOCK(st.st_mode) ? -EEXIST : 0;
  if (r == 0) {
    uint64_t identity = file_identity(file, "", AT_EMPTY_PATH);
    if (!socket_is_dead(file)) r = -EADDRINUSE;
    else if (file_identity(dirfd, name, AT_SYMLINK_NOFOLLOW) != identity) r = -ENOENT; /* replaced: look again */
    else if (unlinkat(dirfd, name, 0) < 0 && errno != ENOENT) r = -errno;
  }
  close(file);
  return r;
}

/* The address to bind: PATH made absolute, so that the kernel records the name an operator can
 * find (ss -xlp, /proc/net/unix). An absolute PATH is kept as written; a relative one gets the
 * directory's real path (the magic link's target). Only a name longer than sun_path allows is bound
 * through the directory fd's magic link instead, and recorded so. */
static int bind_address(const char *path, int dirfd, const char *base, struct sockaddr_un *addr) {
  char abs[PATH_MAX], magic[32];
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  size_t cap = sizeof addr->sun_path;
  if (path[0] == '/') {
    if (strlen(path) < cap) return snprintf(addr->sun_path, cap, "%s", path), 0;
  } else {
    snprintf(magic, sizeof magic, "/proc/self/fd/%d", dirfd);
    ssize_t n = readlink(magic, abs, sizeof abs - 1);
    if (n > 0 && abs[0] == '/') {
      abs[n] = 0;
      if ((size_t)snprintf(addr->sun_path, cap, "%s%s%s", abs, n > 1 ? "/" : "", base) < cap) return 0;
    }
  }
  if ((size_t)snprintf(addr->sun_path, cap, "/proc/self/fd/%d/%s", dirfd, base) >= cap) return -ENAMETOOLONG;
  return 0;
}

/* listenUnix(path, type, mode, backlog) -> { fd, identity }
 *
 * Binds at PATH itself, so that the kernel records PATH as the socket's name, and keeps three
 * promises (docs/security.md, "The listening socket"):
 * - It never replaces a socket that a live process holds. bind() never replaces anything; when
 *   something is at PATH, it is removed only if it is a socket that no socket is bound to (see
 *   socket_is_dead: a broker that has bound and not yet listened counts as live), and only while
 *   it is still the file the probe found dead.
 * - It never unlinks anything that is not a socket, and never follows a symlink at PATH: bind does
 *   not follow one (EADDRINUSE), and what is there is examined with AT_SYMLINK_NOFOLLOW.
 * - The socket is never connectable with more permissions than MODE: its mode is set on the socket
 *   before bind, which creates the file with it less the umask; bits the umask took are put back
 *   (through an O_PATH fd of the file, checked to be a socket) before listen(), and until listen()
 *   no one can connect at all. The process umask is never touched: it is process-wide.
 * Brokers starting at once serialise the removal of a dead socket on a lock of the directory (see
 * lock_directory). What remains is in docs/security.md. */
static napi_value js_listen_unix(napi_env env, napi_callback_info info) {
  ARGS(4);
  INT_ARG(1, type);
  UINT_ARG(2, mode);
  INT_ARG(3, backlog);
  char path[PATH_MAX], dir[PATH_MAX];
  const char *base;
  int r = arg_path(env, argv[0], path, sizeof path, NULL);
  if (r) return throw_errno(env, -r, "bind");
  if ((r = split_path(path, dir, sizeof dir, &base))) return throw_errno(env, -r, "bind");

  int dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (dirfd < 0) return throw_errno(env, errno, "open");
  struct sockaddr_un addr;
  int fd = -1, lockfd = -1, pathfd = -1, err = 0;
  uint64_t identity = 0;
  const char *failed = "bind";
  bool bound = false;
  if ((r = bind_address(path, dirfd, base, &addr))) {
    err = -r;
    goto out;
  }
  fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    err = errno, failed = "socket";
    goto out;
  }
  /* The mode of the socket's own inode is the mode bind gives the file (less the umask). */
  if (fchmod(fd, mode & 07777) < 0) {
    err = errno, failed = "chmod";
    goto out;
  }
  for (int tries = 0; tries < 4 && !bound; tries++) {
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
      bound = true;
      break;
    }
    if (errno != EADDRINUSE) {
      err = errno;
      goto out;
    }
    if (lockfd < 0) lockfd = lock_directory(dirfd);
    r = remove_dead_socket(dirfd, base);
    if (r == -EEXIST) {
      err = EEXIST, failed = "bind (path exists and is not a socket)";
      goto out;
    }
    if (r == -EADDRINUSE) {
      err = EADDRINUSE, failed = "bind (another process is listening on this socket, or is about to)";
      goto out;
    }
    if (r < 0 && r != -ENOENT) {
      err = -r, failed = "unlink";
      goto out;
    }
  }
  if (!bound) {
    err = EADDRINUSE, failed = "bind (the path keeps changing)";
    goto out;
  }
  pathfd = openat(dirfd, base, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  identity = pathfd < 0 ? 0 : file_identity(pathfd, "", AT_EMPTY_PATH);
  if (!identity) { /* not a socket at PATH a moment after our bind: someone else writes there */
    err = EEXIST, failed = "bind (the socket file was replaced)";
    goto out;
  }
  struct stat st;
  if (fstat(pathfd, &st) < 0 || (st.st_mode & 07777) != (mode & 07777)) {
    char magic[32];
    snprintf(magic, sizeof magic, "/proc/self/fd/%d", pathfd);
    if (chmod(magic, mode & 07777) < 0) {
      err = errno, failed = "chmod";
      goto out;
    }
  }
  if (listen(fd, backlog) < 0) {
    err = errno, failed = "listen";
    goto out;
  }
out:
  if (err && bound && identity && file_identity(dirfd, base, AT_SYMLINK_NOFOLLOW) == identity) unlinkat(dirfd, base, 0);
  if (pathfd >= 0) close(pathfd);
  if (lockfd >= 0) close(lockfd); /* releases the lock, after listen() */
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
  bool removed = identity != 0 && file_identity(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW) == identity && unlink(path) == 0;
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
