/* The syscall hook's socket calls: connect() and bind() of a confined program, performed by the
 * broker (src/hook/sockets.ts decides; this part only performs).
 *
 * - programSocket: the program's socket, as the broker's own fd for the same open file
 *   (pidfd_getfd), and what it is (domain, type, status flags), read from the kernel, never from
 *   the program's arguments.
 * - unixConnectTo / unixBindAt: connect() and bind() of that socket by path, beneath a rule's
 *   root. The address given to the kernel is "/proc/self/fd/FD" (connect: the socket file, found
 *   with openat2 and O_PATH) or "/proc/self/fd/DIRFD/NAME" (bind: NAME made in a directory found
 *   with openat2): the kernel walks the magic link to that very inode, so no path string is ever
 *   resolved again from '/'.
 * - connectRaw, pollWritable, socketError, setNonblock: connect() of an address the broker copied,
 *   on the broker's fd for the program's (non-UNIX) socket, without blocking the event loop.
 *
 * The broker acts on the program's own open file (pidfd_getfd gives the broker an fd for it, as
 * dup does): the program's fd keeps its number, flags, options and bound name, and nothing has to
 * be installed in its place.
 *
 * Every call returns a result or -errno.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "napi.h"
#include "notify.h"
#include "parts.h"

/* programSocket(tid, tgid, fd, out: Int32Array(3)): the broker's fd (close-on-exec) for the open
 * file at fd in thread tid (its process tgid on kernels without thread pidfds), and out = [domain,
 * type, status flags]. -ENOTSOCK if it is not a socket, -EBADF if there is no such fd, -ESRCH if
 * the thread is gone, -EPERM if the kernel does not let the broker take it. */
static napi_value js_program_socket(napi_env env, napi_callback_info info) {
  ARGS(4);
  INT_ARG(0, tid);
  INT_ARG(1, tgid);
  INT_ARG(2, fd);
  uint8_t *out;
  size_t len;
  if (get_buffer(env, argv[3], &out, &len) || len < 3 * sizeof(int32_t)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "out must be an Int32Array of 3");
    return NULL;
  }
  int s = fetch_fd(tid, tgid, fd);
  if (s < 0) return make_int(env, s);
  int32_t v[3];
  socklen_t l = sizeof v[0];
  if (getsockopt(s, SOL_SOCKET, SO_DOMAIN, &v[0], &l) < 0 || (l = sizeof v[1], getsockopt(s, SOL_SOCKET, SO_TYPE, &v[1], &l) < 0)) {
    int err = errno;
    close(s);
    return make_int(env, -err);
  }
  v[2] = fcntl(s, F_GETFL);
  memcpy(out, v, sizeof v);
  return make_int(env, s);
}

/* "/proc/self/fd/FD" or "/proc/self/fd/FD/NAME" (name not NULL) as a sockaddr_un; -EINVAL for a
 * name that is not one component, -ENAMETOOLONG if it does not fit sun_path (108 bytes: a name
 * longer than about 88 bytes cannot be bound this way). */
static int address_at(int fd, const char *name, struct sockaddr_un *a, socklen_t *alen) {
  if (name && (!*name || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))) return -EINVAL;
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  int n = name ? snprintf(a->sun_path, sizeof a->sun_path, "/proc/self/fd/%d/%s", fd, name)
               : snprintf(a->sun_path, sizeof a->sun_path, "/proc/self/fd/%d", fd);
  if (n < 0 || (size_t)n >= sizeof a->sun_path) return -ENAMETOOLONG;
  *alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n + 1);
  return 0;
}

/* unixConnectTo(sock, target): connects sock (the broker's fd for the program's socket) to the
 * socket file that target (an O_PATH fd the resolver found beneath a rule's root, never following
 * its last component) is: the kernel walks the magic link to that inode, so nothing is looked up
 * by name again. 0 or -errno (ECONNREFUSED: no one listens there; EAGAIN: its backlog is full and
 * sock is non-blocking). */
static napi_value js_unix_connect_to(napi_env env, napi_callback_info info) {
  ARGS(2);
  INT_ARG(0, sock);
  INT_ARG(1, target);
  struct sockaddr_un a;
  socklen_t alen;
  int bad = address_at(target, NULL, &a, &alen);
  if (bad) return make_int(env, bad);
  int r;
  do r = connect(sock, (struct sockaddr *)&a, alen);
  while (r < 0 && errno == EINTR);
  return make_int(env, r < 0 ? -errno : 0);
}

/* unixBindAt(sock, dirfd, name): binds sock (the broker's fd for the program's socket) to NAME in
 * dirfd (found with openat2 beneath a rule's root), which the kernel creates as a socket file
 * (mode 0777 less this process's umask; an existing name, even a symlink, is EADDRINUSE and never
 * followed); 0 or -errno. */
static napi_value js_unix_bind_at(napi_env env, napi_callback_info info) {
  ARGS(3);
  INT_ARG(0, sock);
  INT_ARG(1, dirfd);
  PATH_ARG(2, name);
  struct sockaddr_un a;
  socklen_t alen;
  int bad = address_at(dirfd, name, &a, &alen);
  if (bad) return make_int(env, bad);
  return make_int(env, bind(sock, (struct sockaddr *)&a, alen) < 0 ? -errno : 0);
}

/* connectRaw(fd, addr: Buffer, len): connect(fd, addr, len); 0 or -errno (EINPROGRESS...). */
static napi_value js_connect_raw(napi_env env, napi_callback_info info) {
  ARGS(3);
  INT_ARG(0, fd);
  uint8_t *addr;
  size_t cap;
  INT_ARG(2, len);
  if (get_buffer(env, argv[1], &addr, &cap) || len < 0 || (size_t)len > cap) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "addr must be a Buffer of at least len bytes");
    return NULL;
  }
  int r;
  do r = connect(fd, (struct sockaddr *)addr, (socklen_t)len);
  while (r < 0 && errno == EINTR);
  return make_int(env, r < 0 ? -errno : 0);
}

/* pollWritable(fd): 1 once a connect in progress has ended (SO_ERROR then says how), 0 before. */
static napi_value js_poll_writable(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, fd);
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  int r = poll(&p, 1, 0);
  if (r < 0) return make_int(env, -errno);
  return make_int(env, r > 0 && p.revents ? 1 : 0);
}

/* socketError(fd): SO_ERROR (positive), 0, or -errno. */
static napi_value js_socket_error(napi_env env, napi_callback_info info) {
  ARGS(1);
  INT_ARG(0, fd);
  int e = 0;
  socklen_t l = sizeof e;
  return make_int(env, getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l) < 0 ? -errno : e);
}

/* setNonblock(fd, on): sets or clears O_NONBLOCK on the open file; 0 or -errno. */
static napi_value js_set_nonblock(napi_env env, napi_callback_info info) {
  ARGS(2);
  INT_ARG(0, fd);
  BOOL_ARG(1, on);
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return make_int(env, -errno);
  return make_int(env, fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK) < 0 ? -errno : 0);
}

/* The part's register function (see native/module.c). */
napi_status hook_sockets_register(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
    {"programSocket", js_program_socket},
    {"unixConnectTo", js_unix_connect_to},
    {"unixBindAt", js_unix_bind_at},
    {"connectRaw", js_connect_raw},
    {"pollWritable", js_poll_writable},
    {"socketError", js_socket_error},
    {"setNonblock", js_set_nonblock},
  };
  return export_functions(env, exports, fns, COUNT(fns));
}
