/* File operations beneath a directory fd: openat2, the resolver's lookup (O_PATH and fstat), its
 * fast path openFile, create, reopen through /proc/self/fd, fstat, dup and close. Each returns an fd
 * or -errno: they are on the request path. No policy lives here; see openFile for the one rule the
 * fast path applies, and test/fast-path.test.ts for the test that it agrees with the resolver. */
#define _GNU_SOURCE
#include "files.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "napi.h"
#include "parts.h"

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

int proc_fd_dir_get(void) {
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
int reopen_fd(int fd, uint32_t flags) {
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
int lookup_fd(int dirfd, const char *path, uint32_t flags, uint32_t resolve, struct stat *st) {
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
int create_fd(int dirfd, const char *path, uint32_t flags, uint32_t mode, uint32_t resolve) {
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

napi_status files_register(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
    {"openat2", js_openat2},
    {"open", js_open},
    {"lookup", js_lookup},
    {"openFile", js_open_file},
    {"create", js_create},
    {"reopen", js_reopen},
    {"fstat", js_fstat},
    {"dup", js_dup},
    {"close", js_close},
  };
#define K(x) export_constant(env, exports, #x, x)
  K(O_RDONLY); K(O_WRONLY); K(O_RDWR); K(O_ACCMODE); K(O_CREAT); K(O_EXCL); K(O_NOCTTY); K(O_TRUNC);
  K(O_APPEND); K(O_NONBLOCK); K(O_DSYNC); K(O_SYNC); K(O_DIRECT); K(O_LARGEFILE); K(O_DIRECTORY);
  K(O_NOFOLLOW); K(O_NOATIME); K(O_CLOEXEC); K(O_PATH); K(O_TMPFILE); K(FASYNC);
  K(RESOLVE_NO_XDEV); K(RESOLVE_NO_MAGICLINKS); K(RESOLVE_NO_SYMLINKS); K(RESOLVE_BENEATH);
  K(RESOLVE_IN_ROOT); K(RESOLVE_CACHED);
  K(S_IFMT); K(S_IFREG); K(S_IFDIR); K(S_IFLNK); K(S_IFIFO); K(S_IFSOCK); K(S_IFCHR); K(S_IFBLK);
#undef K
  proc_fd_dir_get(); /* early, while /proc is surely there; retried on demand if it was not */
  return export_functions(env, exports, fns, COUNT(fns));
}
