/* openhook native file operations: one thin wrapper per *at syscall that the broker performs for a
 * confined program (mkdir, unlink, rename, link, symlink, chmod, chown, utimes, truncate, mkfifo).
 *
 * No policy and no path walking lives here. The TypeScript side (src/resolver/operations.ts) finds
 * the parent directory fd safely with openat2 beneath the rule's root, and passes a single name
 * (never a path with '/') or an O_PATH fd. Each call returns 0 (or an fd) or -errno, never throws
 * for a syscall's failure: these are on the request path.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <uchar.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static napi_value int_value(napi_env env, int64_t v) {
  napi_value out;
  napi_create_int64(env, v, &out);
  return out;
}

/* A name or path argument: a Buffer, or a byte string (each char one byte, as src/bytestring.ts
 * makes them). NUL inside, a char above 0xFF, or too long: -errno, never truncated. */
static int byte_string(napi_env env, napi_value v, char *out, size_t cap) {
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
  return 0;
}

/* Arguments: n of them, numbers as int64 (fds, flags, modes, ids, times), strings by index. */
#define ARGS(n)                                                                                    \
  size_t argc = n;                                                                                 \
  napi_value argv[n];                                                                              \
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < n) {               \
    napi_throw_type_error(env, "ERR_INVALID_ARG", "too few arguments");                            \
    return NULL;                                                                                   \
  }
#define NUM(i, name)                                                                               \
  int64_t name;                                                                                    \
  if (napi_get_value_int64(env, argv[i], &name) != napi_ok) {                                      \
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", #name " must be a number");                 \
    return NULL;                                                                                   \
  }
#define STR(i, name)                                                                               \
  char name[PATH_MAX];                                                                             \
  {                                                                                                \
    int bad = byte_string(env, argv[i], name, sizeof name);                                        \
    if (bad) return int_value(env, bad);                                                           \
  }

static int result(int r) {
  return r < 0 ? -errno : r;
}

/* "/proc/self/fd/N": the exact inode an O_PATH fd holds, for the calls that take no fd. */
static void proc_path(char *out, size_t cap, int fd) {
  snprintf(out, cap, "/proc/self/fd/%d", fd);
}

/* mkdirat(dirfd, name, mode) -> 0 or -errno. The mode is then set exactly (see chmodFd): the
 * broker's process umask is not the client's and must not decide it. */
static napi_value js_mkdirat(napi_env env, napi_callback_info info) {
  ARGS(3);
  NUM(0, dirfd);
  NUM(2, mode);
  STR(1, name);
  if (mkdirat((int)dirfd, name, (mode_t)(mode & 07777)) < 0) return int_value(env, -errno);
  /* O_NOFOLLOW|O_DIRECTORY: if the name was swapped between the two calls, nothing else is chmodded
   * but another directory beneath the same parent, and never through a symlink. */
  int fd = openat((int)dirfd, name, O_PATH | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    char path[32];
    proc_path(path, sizeof path, fd);
    chmod(path, (mode_t)(mode & 07777));
    close(fd);
  }
  return int_value(env, 0);
}

/* unlinkat(dirfd, name, flags) -> 0 or -errno (flags: 0 or AT_REMOVEDIR). */
static napi_value js_unlinkat(napi_env env, napi_callback_info info) {
  ARGS(3);
  NUM(0, dirfd);
  NUM(2, flags);
  STR(1, name);
  return int_value(env, result(unlinkat((int)dirfd, name, (int)flags)));
}

/* renameat2(olddirfd, oldname, newdirfd, newname, flags) -> 0 or -errno. */
static napi_value js_renameat2(napi_env env, napi_callback_info info) {
  ARGS(5);
  NUM(0, olddirfd);
  NUM(2, newdirfd);
  NUM(4, flags);
  STR(1, oldname);
  STR(3, newname);
  return int_value(env, result((int)syscall(SYS_renameat2, (int)olddirfd, oldname, (int)newdirfd, newname, (unsigned)flags)));
}

/* linkFd(fd, newdirfd, newname) -> 0 or -errno: gives the inode an O_PATH (or O_TMPFILE) fd holds a
 * name. AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; without it, linkat through /proc/self/fd with
 * AT_SYMLINK_FOLLOW links the same inode (a symlink's own inode, for an O_PATH|O_NOFOLLOW fd). */
static napi_value js_link_fd(napi_env env, napi_callback_info info) {
  ARGS(3);
  NUM(0, fd);
  NUM(1, newdirfd);
  STR(2, newname);
  if (linkat((int)fd, "", (int)newdirfd, newname, AT_EMPTY_PATH) == 0) return int_value(env, 0);
  if (errno != ENOENT && errno != EPERM) return int_value(env, -errno);
  char path[32];
  proc_path(path, sizeof path, (int)fd);
  return int_value(env, result(linkat(AT_FDCWD, path, (int)newdirfd, newname, AT_SYMLINK_FOLLOW)));
}

/* symlinkat(target, newdirfd, name) -> 0 or -errno. The target is stored as given. */
static napi_value js_symlinkat(napi_env env, napi_callback_info info) {
  ARGS(3);
  NUM(1, newdirfd);
  STR(0, target);
  STR(2, name);
  return int_value(env, result(symlinkat(target, (int)newdirfd, name)));
}

/* mkfifoat(dirfd, name, mode) -> 0 or -errno: mknodat for a FIFO, never a device. */
static napi_value js_mkfifoat(napi_env env, napi_callback_info info) {
  ARGS(3);
  NUM(0, dirfd);
  NUM(2, mode);
  STR(1, name);
  if (mknodat((int)dirfd, name, S_IFIFO | (mode_t)(mode & 0777), 0) < 0) return int_value(env, -errno);
  int fd = openat((int)dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0) {
    struct stat st;
    char path[32];
    proc_path(path, sizeof path, fd);
    if (fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode)) chmod(path, (mode_t)(mode & 0777));
    close(fd);
  }
  return int_value(env, 0);
}

/* chmodFd(pathfd, mode) -> 0 or -errno: the inode the O_PATH fd holds. A symlink's mode cannot
 * change on Linux (EOPNOTSUPP, as lchmod). */
static napi_value js_chmod_fd(napi_env env, napi_callback_info info) {
  ARGS(2);
  NUM(0, fd);
  NUM(1, mode);
  struct stat st;
  if (fstat((int)fd, &st) < 0) return int_value(env, -errno);
  if (S_ISLNK(st.st_mode)) return int_value(env, -EOPNOTSUPP);
  char path[32];
  proc_path(path, sizeof path, (int)fd);
  return int_value(env, result(chmod(path, (mode_t)(mode & 07777))));
}

/* chownFd(pathfd, uid, gid) -> 0 or -errno. -1 keeps an id, as chown(2). */
static napi_value js_chown_fd(napi_env env, napi_callback_info info) {
  ARGS(3);
  NUM(0, fd);
  NUM(1, uid);
  NUM(2, gid);
  return int_value(env, result(fchownat((int)fd, "", (uid_t)uid, (gid_t)gid, AT_EMPTY_PATH)));
}

/* utimensFd(pathfd, atimeSec, atimeNsec, mtimeSec, mtimeNsec) -> 0 or -errno; nsec may be UTIME_NOW
 * or UTIME_OMIT. AT_EMPTY_PATH acts on the fd's own inode, a symlink's too. */
static napi_value js_utimens_fd(napi_env env, napi_callback_info info) {
  ARGS(5);
  NUM(0, fd);
  NUM(1, as);
  NUM(2, ans);
  NUM(3, ms);
  NUM(4, mns);
  struct timespec ts[2] = {{.tv_sec = as, .tv_nsec = ans}, {.tv_sec = ms, .tv_nsec = mns}};
  if (utimensat((int)fd, "", ts, AT_EMPTY_PATH) == 0) return int_value(env, 0);
  if (errno != EINVAL && errno != ENOENT) return int_value(env, -errno);
  /* Kernels before AT_EMPTY_PATH support in utimensat: the same inode through /proc. */
  char path[32];
  proc_path(path, sizeof path, (int)fd);
  return int_value(env, result(utimensat(AT_FDCWD, path, ts, 0)));
}

/* ftruncate(fd, length) -> 0 or -errno. */
static napi_value js_ftruncate(napi_env env, napi_callback_info info) {
  ARGS(2);
  NUM(0, fd);
  NUM(1, length);
  int r;
  do r = ftruncate((int)fd, (off_t)length);
  while (r < 0 && errno == EINTR);
  return int_value(env, result(r));
}

/* fstatatNoFollow(dirfd, name, out: Float64Array(2)) -> 0 or -errno; out = [mode, nlink]. What a
 * name in a directory found safely is, without following it. */
static napi_value js_fstatat_nofollow(napi_env env, napi_callback_info info) {
  ARGS(3);
  NUM(0, dirfd);
  napi_typedarray_type t;
  size_t n, off;
  double *out;
  napi_value ab;
  if (napi_get_typedarray_info(env, argv[2], &t, &n, (void **)&out, &ab, &off) != napi_ok || t != napi_float64_array || n < 2) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "out must be a Float64Array of 2");
    return NULL;
  }
  STR(1, name);
  struct stat st;
  if (fstatat((int)dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) return int_value(env, -errno);
  out[0] = st.st_mode, out[1] = (double)st.st_nlink;
  return int_value(env, 0);
}

static void set_int(napi_env env, napi_value obj, const char *name, int64_t v) {
  napi_set_named_property(env, obj, name, int_value(env, v));
}

/* Called once from binding.c's init(): adds these functions, and their constants under
 * exports.fileConstants. */
void openhook_fileops(napi_env env, napi_value exports) {
  napi_property_descriptor fns[] = {
#define FN(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_default, NULL}
    FN("mkdirat", js_mkdirat),
    FN("unlinkat", js_unlinkat),
    FN("renameat2", js_renameat2),
    FN("linkFd", js_link_fd),
    FN("symlinkat", js_symlinkat),
    FN("mkfifoat", js_mkfifoat),
    FN("chmodFd", js_chmod_fd),
    FN("chownFd", js_chown_fd),
    FN("utimensFd", js_utimens_fd),
    FN("ftruncate", js_ftruncate),
    FN("fstatatNoFollow", js_fstatat_nofollow),
#undef FN
  };
  napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns);
  napi_value c;
  napi_create_object(env, &c);
#define K(x) set_int(env, c, #x, x)
  K(AT_REMOVEDIR); K(RENAME_NOREPLACE); K(RENAME_EXCHANGE); K(UTIME_NOW); K(UTIME_OMIT);
  K(AT_SYMLINK_NOFOLLOW); K(R_OK); K(W_OK); K(X_OK); K(F_OK);
#undef K
  napi_set_named_property(env, exports, "fileConstants", c);
}
