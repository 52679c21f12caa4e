/* openhook native file operations: one thin wrapper per *at syscall that the broker performs for a
 * confined program (mkdir, unlink, rename, link, symlink, chmod, chown, utimes, truncate, mkfifo).
 *
 * No policy and no path walking lives here. The TypeScript side (src/resolver/operations.ts) finds
 * the parent directory fd safely with openat2 beneath the rule's root, and passes a single name
 * (never a path with '/') or an O_PATH fd. Each call returns 0 (or an fd) or -errno, never throws
 * for a syscall's failure: these are on the request path. A part of the addon (see module.c):
 * fileops_register defines the functions and the constants.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "napi.h"
#include "parts.h"

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static int result(int r) {
  return r < 0 ? -errno : r;
}

/* "/proc/self/fd/N": the exact inode an O_PATH fd holds, for the calls that take no fd. */
static void proc_path(char *out, size_t cap, int fd) {
  snprintf(out, cap, "/proc/self/fd/%d", fd);
}

/* After mkdirat or mknodat: the new name's mode set exactly (as chmodFd does), through an O_PATH
 * fd that never follows a symlink, and only if what is there now has the type just made. If the
 * name was swapped between the two calls, nothing else is chmodded but another file of that type
 * beneath the same parent, and never through a symlink. */
static void set_new_mode(int dirfd, const char *name, mode_t type, mode_t mode) {
  int fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC | (type == S_IFDIR ? O_DIRECTORY : 0));
  if (fd < 0) return;
  struct stat st;
  if (fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == type) {
    char path[32];
    proc_path(path, sizeof path, fd);
    chmod(path, mode);
  }
  close(fd);
}

/* mkdirat(dirfd, name, mode) -> 0 or -errno. The mode is then set exactly (see chmodFd): the
 * broker's process umask is not the client's and must not decide it. */
static napi_value js_mkdirat(napi_env env, napi_callback_info info) {
  ARGS(3);
  INT_ARG(0, dirfd);
  INT_ARG(2, mode);
  PATH_ARG(1, name);
  if (mkdirat((int)dirfd, name, (mode_t)(mode & 07777)) < 0) return make_int(env, -errno);
  set_new_mode((int)dirfd, name, S_IFDIR, (mode_t)(mode & 07777));
  return make_int(env, 0);
}

/* unlinkat(dirfd, name, flags) -> 0 or -errno (flags: 0 or AT_REMOVEDIR). */
static napi_value js_unlinkat(napi_env env, napi_callback_info info) {
  ARGS(3);
  INT_ARG(0, dirfd);
  INT_ARG(2, flags);
  PATH_ARG(1, name);
  return make_int(env, result(unlinkat((int)dirfd, name, (int)flags)));
}

/* renameat2(olddirfd, oldname, newdirfd, newname, flags) -> 0 or -errno. */
static napi_value js_renameat2(napi_env env, napi_callback_info info) {
  ARGS(5);
  INT_ARG(0, olddirfd);
  INT_ARG(2, newdirfd);
  INT_ARG(4, flags);
  PATH_ARG(1, oldname);
  PATH_ARG(3, newname);
  return make_int(env, result((int)syscall(SYS_renameat2, (int)olddirfd, oldname, (int)newdirfd, newname, (unsigned)flags)));
}

/* linkFd(fd, newdirfd, newname) -> 0 or -errno: gives the inode an O_PATH (or O_TMPFILE) fd holds a
 * name. AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; without it, linkat through /proc/self/fd with
 * AT_SYMLINK_FOLLOW links the same inode (a symlink's own inode, for an O_PATH|O_NOFOLLOW fd). */
static napi_value js_link_fd(napi_env env, napi_callback_info info) {
  ARGS(3);
  INT_ARG(0, fd);
  INT_ARG(1, newdirfd);
  PATH_ARG(2, newname);
  if (linkat((int)fd, "", (int)newdirfd, newname, AT_EMPTY_PATH) == 0) return make_int(env, 0);
  if (errno != ENOENT && errno != EPERM) return make_int(env, -errno);
  char path[32];
  proc_path(path, sizeof path, (int)fd);
  return make_int(env, result(linkat(AT_FDCWD, path, (int)newdirfd, newname, AT_SYMLINK_FOLLOW)));
}

/* symlinkat(target, newdirfd, name) -> 0 or -errno. The target is stored as given. */
static napi_value js_symlinkat(napi_env env, napi_callback_info info) {
  ARGS(3);
  INT_ARG(1, newdirfd);
  PATH_ARG(0, target);
  PATH_ARG(2, name);
  return make_int(env, result(symlinkat(target, (int)newdirfd, name)));
}

/* mkfifoat(dirfd, name, mode) -> 0 or -errno: mknodat for a FIFO, never a device. */
static napi_value js_mkfifoat(napi_env env, napi_callback_info info) {
  ARGS(3);
  INT_ARG(0, dirfd);
  INT_ARG(2, mode);
  PATH_ARG(1, name);
  if (mknodat((int)dirfd, name, S_IFIFO | (mode_t)(mode & 0777), 0) < 0) return make_int(env, -errno);
  set_new_mode((int)dirfd, name, S_IFIFO, (mode_t)(mode & 0777));
  return make_int(env, 0);
}

/* chmodFd(pathfd, mode) -> 0 or -errno: the inode the O_PATH fd holds. A symlink's mode cannot
 * change on Linux (EOPNOTSUPP, as lchmod). */
static napi_value js_chmod_fd(napi_env env, napi_callback_info info) {
  ARGS(2);
  INT_ARG(0, fd);
  INT_ARG(1, mode);
  struct stat st;
  if (fstat((int)fd, &st) < 0) return make_int(env, -errno);
  if (S_ISLNK(st.st_mode)) return make_int(env, -EOPNOTSUPP);
  char path[32];
  proc_path(path, sizeof path, (int)fd);
  return make_int(env, result(chmod(path, (mode_t)(mode & 07777))));
}

/* chownFd(pathfd, uid, gid) -> 0 or -errno. -1 keeps an id, as chown(2). */
static napi_value js_chown_fd(napi_env env, napi_callback_info info) {
  ARGS(3);
  INT_ARG(0, fd);
  INT_ARG(1, uid);
  INT_ARG(2, gid);
  return make_int(env, result(fchownat((int)fd, "", (uid_t)uid, (gid_t)gid, AT_EMPTY_PATH)));
}

/* utimensFd(pathfd, atimeSec, atimeNsec, mtimeSec, mtimeNsec) -> 0 or -errno; nsec may be UTIME_NOW
 * or UTIME_OMIT. AT_EMPTY_PATH acts on the fd's own inode, a symlink's too. */
static napi_value js_utimens_fd(napi_env env, napi_callback_info info) {
  ARGS(5);
  INT_ARG(0, fd);
  I64_ARG(1, as);
  I64_ARG(2, ans);
  I64_ARG(3, ms);
  I64_ARG(4, mns);
  struct timespec ts[2] = {{.tv_sec = as, .tv_nsec = ans}, {.tv_sec = ms, .tv_nsec = mns}};
  if (utimensat((int)fd, "", ts, AT_EMPTY_PATH) == 0) return make_int(env, 0);
  if (errno != EINVAL && errno != ENOENT) return make_int(env, -errno);
  /* Kernels before AT_EMPTY_PATH support in utimensat: the same inode through /proc. */
  char path[32];
  proc_path(path, sizeof path, (int)fd);
  return make_int(env, result(utimensat(AT_FDCWD, path, ts, 0)));
}

/* ftruncate(fd, length) -> 0 or -errno. */
static napi_value js_ftruncate(napi_env env, napi_callback_info info) {
  ARGS(2);
  INT_ARG(0, fd);
  I64_ARG(1, length);
  int r;
  do r = ftruncate((int)fd, (off_t)length);
  while (r < 0 && errno == EINTR);
  return make_int(env, result(r));
}

/* fstatatNoFollow(dirfd, name, out: Float64Array(2)) -> 0 or -errno; out = [mode, nlink]. What a
 * name in a directory found safely is, without following it. */
static napi_value js_fstatat_nofollow(napi_env env, napi_callback_info info) {
  ARGS(3);
  INT_ARG(0, dirfd);
  napi_typedarray_type t;
  size_t n, off;
  double *out;
  napi_value ab;
  if (napi_get_typedarray_info(env, argv[2], &t, &n, (void **)&out, &ab, &off) != napi_ok || t != napi_float64_array || n < 2) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "out must be a Float64Array of 2");
    return NULL;
  }
  PATH_ARG(1, name);
  struct stat st;
  if (fstatat((int)dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) return make_int(env, -errno);
  out[0] = st.st_mode, out[1] = (double)st.st_nlink;
  return make_int(env, 0);
}

napi_status fileops_register(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
    {"mkdirat", js_mkdirat},
    {"unlinkat", js_unlinkat},
    {"renameat2", js_renameat2},
    {"linkFd", js_link_fd},
    {"symlinkat", js_symlinkat},
    {"mkfifoat", js_mkfifoat},
    {"chmodFd", js_chmod_fd},
    {"chownFd", js_chown_fd},
    {"utimensFd", js_utimens_fd},
    {"ftruncate", js_ftruncate},
    {"fstatatNoFollow", js_fstatat_nofollow},
  };
  EXPORT_CONSTANT(exports, AT_REMOVEDIR);
  EXPORT_CONSTANT(exports, RENAME_NOREPLACE);
  EXPORT_CONSTANT(exports, RENAME_EXCHANGE);
  EXPORT_CONSTANT(exports, UTIME_NOW);
  EXPORT_CONSTANT(exports, UTIME_OMIT);
  EXPORT_CONSTANT(exports, AT_SYMLINK_NOFOLLOW);
  EXPORT_CONSTANT(exports, R_OK);
  EXPORT_CONSTANT(exports, W_OK);
  EXPORT_CONSTANT(exports, X_OK);
  EXPORT_CONSTANT(exports, F_OK);
  return export_functions(env, exports, fns, COUNT(fns));
}
