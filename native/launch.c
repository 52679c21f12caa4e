/* openhook-launch: confines a program between fork and exec, for `openhook run`.
 *
 *   openhook-launch [--hook-from FD] [--hook-fd N] [--report-fd FD] [--wait] [--parent PID]
 *                   [--path ACCESS PATH]... [--device ACCESS PATH]... [--pass-fd N]...
 *                   [--allow-unconfined] [--allow-unix-sockets] [--notify-to FD] -- CMD ARGS...
 *
 * Node spawns this helper with the hook socket and a report socket; the helper then, in order:
 *   1. moves the hook socket to fd N (exported by the caller as OPENHOOK_FD=N);
 *   2. closes every other fd except stdio, the --pass-fd fds (kept at their numbers) and its report
 *      fd (which is close-on-exec);
 *   3. with --parent PID, asks for SIGKILL when its parent dies, and refuses to go on if the parent
 *      is no longer PID: the broker lives in the parent, so a program that outlives it can never be
 *      served again, and nothing else would ever stop it (QEMU with -S waits for ever);
 *   4. sets no_new_privs;
 *   5. applies Landlock with the ABI the kernel reports, handling every filesystem right of that
 *      ABI, granting only what the --path options say, and scoping abstract UNIX sockets and
 *      signals (ABI 6);
 *   6. drops every capability (a root program would otherwise keep CAP_SYS_MODULE and friends);
 *   7. installs a seccomp filter for what Landlock cannot see (see build_filter());
 *   8. with --notify-to FD, installs a second filter that turns the open family into seccomp user
 *      notifications (the syscall hook: see apply_notify()), sends its listener fd to the broker
 *      over FD, and closes both: the program never holds its own listener;
 *   9. execs CMD.
 *
 * Landlock and seccomp confine only the calling thread and its future children, which is why this
 * cannot happen inside Node. The helper holds no policy: which paths get which access is decided by
 * the caller (src/launch/confinement.ts); the seccomp rules are mechanism that must match the
 * architecture's syscall numbers, so they live here.
 *
 * --path ACCESS PATH: ACCESS is letters: r read (files and directory listings), x execute, w write,
 * t truncate, i ioctl on devices. A missing path is skipped and reported.
 *
 * --device ACCESS PATH: the same grant, on a character device only: a missing node, or anything
 * else (a regular file, a directory, a block device), is fatal. The check is made on the inode that
 * the rule is added for, so nothing can be swapped in between.
 *
 * --pass-fd N: fd N, inherited, reaches CMD at N. It must be open, and must not be the hook's N.
 *
 * The report: one line per fact, tab-separated fields, bytes below 0x20, 0x7f and '\' escaped as
 * \xNN. The caller parses it (src/launch/report.ts). It ends with "exec" before execvp; a failure
 * afterwards adds an "error" line. The report fd is close-on-exec, so the caller sees EOF when CMD
 * starts. With --wait, the helper waits for one byte on the report fd before exec, so that the
 * caller can print the report before CMD writes anything.
 *
 * Exit status of the helper itself: 125 confinement refused or failed, 126 CMD cannot be executed,
 * 127 CMD not found.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "landlock-uapi.h"

#define EXIT_REFUSED 125
#define EXIT_CANNOT_EXEC 126
#define EXIT_NOT_FOUND 127

/* Syscalls newer than some build hosts' headers. From 424 on, every architecture shares numbers. */
#ifndef __NR_close_range
#define __NR_close_range 436
#endif
#ifndef __NR_landlock_create_ruleset
#define __NR_landlock_create_ruleset 444
#define __NR_landlock_add_rule 445
#define __NR_landlock_restrict_self 446
#endif
#ifndef __NR_fchmodat2
#define __NR_fchmodat2 452
#endif
#ifndef __NR_setxattrat
#define __NR_setxattrat 463
#endif
#ifndef __NR_removexattrat
#define __NR_removexattrat 466
#endif
#ifndef __NR_file_setattr
#define __NR_file_setattr 469
#endif
/* The highest syscall number whose meaning the filter below was reviewed against (Linux 6.18).
 * Anything above is refused with ENOSYS: a syscall added later could be a new way around Landlock,
 * and ENOSYS is what programs already handle as "this kernel is older". */
#define NR_REVIEWED_MAX 469
#define STR_(x) #x
#define STR(x) STR_(x)

#if defined(__x86_64__)
#define OH_AUDIT_ARCH AUDIT_ARCH_X86_64
#define OH_ARCH_NAME "x86_64"
#define OH_X32_SYSCALL_BIT 0x40000000U
#elif defined(__aarch64__)
#define OH_AUDIT_ARCH AUDIT_ARCH_AARCH64
#define OH_ARCH_NAME "aarch64"
#endif

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#undef OH_AUDIT_ARCH /* the filter reads the low word of arguments at the little-endian offset */
#endif

/* ---- the report ---------------------------------------------------------------------------- */

static int report_fd = -1;
/* openhook-exec (native/exec.c) has no caller to parse a report: without one, its stderr gets only
 * the failures, in words (see emit()). */
static const char *human_prefix = NULL;

static void put_escaped(char *out, size_t *n, size_t cap, const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p && *n + 4 < cap; p++) {
    if (*p < 0x20 || *p == 0x7f || *p == '\\') *n += (size_t)snprintf(out + *n, cap - *n, "\\x%02x", *p);
    else out[(*n)++] = (char)*p;
  }
}

/* emit("landlock", "abi", "7", NULL): one report line. Without a report fd, lines go to stderr so
 * that the helper is usable (and debuggable) on its own. */
static void emit(const char *first, ...) {
  char line[8192];
  size_t n = 0;
  va_list ap;
  if (report_fd < 0 && human_prefix) {
    if (strcmp(first, "fatal") && strcmp(first, "error")) return;
    fprintf(stderr, "%s", human_prefix);
    va_start(ap, first);
    for (const char *f = va_arg(ap, const char *); f; f = va_arg(ap, const char *)) fprintf(stderr, ": %s", f);
    va_end(ap);
    fprintf(stderr, "\n");
    return;
  }
  va_start(ap, first);
  for (const char *f = first; f; f = va_arg(ap, const char *)) {
    if (n > 0 && n + 1 < sizeof line) line[n++] = '\t';
    put_escaped(line, &n, sizeof line, f);
  }
  va_end(ap);
  line[n++] = '\n';
  int fd = report_fd >= 0 ? report_fd : 2;
  for (size_t off = 0; off < n;) {
    ssize_t w = write(fd, line + off, n - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    off += (size_t)w;
  }
}

static const char *errname(int err) {
  const char *name = strerrorname_np(err);
  static char buf[16];
  if (name) return name;
  snprintf(buf, sizeof buf, "E%d", err);
  return buf;
}

static const char *num(unsigned long long v) {
  static char bufs[4][24];
  static int i;
  char *b = bufs[i++ & 3];
  snprintf(b, sizeof bufs[0], "%llu", v);
  return b;
}

static _Noreturn void fatal(const char *stage, int err, const char *what) {
  emit("fatal", stage, errname(err), what, NULL);
  _exit(EXIT_REFUSED);
}

/* ---- options --------------------------------------------------------------------------------- */

struct path_grant {
  const char *access;
  const char *path;
  int device; /* --device: a character device, or fatal */
};

struct options {
  int hook_from, hook_fd, report_from;
  int wait;
  long parent;
  int allow_unconfined;
  int allow_unix_sockets;
  int notify_to;
  struct path_grant *paths;
  int npaths;
  int *pass_fds;
  int npass;
  char **argv;
};

static int parse_count(const char *s) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || end == s || v < 0 || v > INT_MAX) return -1;
  return (int)v;
}

static void usage(const char *why) {
  fprintf(stderr, "openhook-launch: %s\n"
                  "usage: openhook-launch [--hook-from FD] [--hook-fd N] [--report-fd FD] [--wait] [--parent PID]\n"
                  "       [--path ACCESS PATH]... [--device ACCESS PATH]... [--pass-fd N]...\n"
                  "       [--allow-unconfined] [--allow-unix-sockets] [--notify-to FD] -- CMD ARGS...\n",
          why);
  _exit(EXIT_REFUSED);
}

static void parse_options(int argc, char **argv, struct options *o) {
  *o = (struct options){.hook_from = -1, .hook_fd = 3, .report_from = -1, .notify_to = -1};
  o->paths = calloc((size_t)argc, sizeof *o->paths);
  o->pass_fds = calloc((size_t)argc, sizeof *o->pass_fds);
  if (!o->paths || !o->pass_fds) usage("out of memory");
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--")) {
      i++;
      break;
    }
    if (!strcmp(a, "--wait")) o->wait = 1;
    else if (!strcmp(a, "--allow-unconfined")) o->allow_unconfined = 1;
    else if (!strcmp(a, "--allow-unix-sockets")) o->allow_unix_sockets = 1;
    else if (i + 1 < argc && !strcmp(a, "--hook-from")) o->hook_from = parse_count(argv[++i]);
    else if (i + 1 < argc && !strcmp(a, "--hook-fd")) o->hook_fd = parse_count(argv[++i]);
    else if (i + 1 < argc && !strcmp(a, "--report-fd")) o->report_from = parse_count(argv[++i]);
    else if (i + 1 < argc && !strcmp(a, "--notify-to")) o->notify_to = parse_count(argv[++i]);
    else if (i + 1 < argc && !strcmp(a, "--parent")) {
      o->parent = parse_count(argv[++i]);
      if (o->parent <= 0) usage("--parent must be a process id");
    }
    else if (i + 2 < argc && !strcmp(a, "--path")) {
      o->paths[o->npaths].access = argv[++i];
      o->paths[o->npaths++].path = argv[++i];
    } else if (i + 2 < argc && !strcmp(a, "--device")) {
      o->paths[o->npaths].access = argv[++i];
      o->paths[o->npaths].device = 1;
      o->paths[o->npaths++].path = argv[++i];
    } else if (i + 1 < argc && !strcmp(a, "--pass-fd")) {
      int fd = parse_count(argv[++i]);
      if (fd < 3) usage("--pass-fd must name an fd above stdio");
      o->pass_fds[o->npass++] = fd;
    } else usage("unknown or incomplete option");
  }
  if (i >= argc) usage("no command given");
  if (o->hook_fd < 3) usage("--hook-fd must be 3 or more");
  if (o->hook_from == -1 || o->hook_from < 3) usage("--hook-from must name an inherited fd above stdio");
  if (o->report_from != -1 && o->report_from < 3) usage("--report-fd must be above stdio");
  if (o->notify_to != -1 && o->notify_to < 3) usage("--notify-to must be above stdio");
  for (int k = 0; k < o->npass; k++) {
    if (o->pass_fds[k] == o->hook_fd) usage("--pass-fd names the hook's --hook-fd");
    if (o->pass_fds[k] == o->hook_from || o->pass_fds[k] == o->report_from || o->pass_fds[k] == o->notify_to)
      usage("--pass-fd names the hook's, the report's or the notify socket's inherited fd");
  }
  o->argv = argv + i;
}

/* ---- fds ------------------------------------------------------------------------------------- */

static void close_from_to(unsigned lo, unsigned hi) {
  if (lo > hi) return;
  if (syscall(__NR_close_range, lo, hi, 0) == 0) return;
  if (errno != ENOSYS) fatal("fds", errno, "close_range");
  /* Before Linux 5.9: close one by one, up to the highest fd this process could have. */
  long max = sysconf(_SC_OPEN_MAX);
  if (max < 0 || max > INT_MAX) max = 1 << 20;
  for (unsigned fd = lo; fd <= hi && fd < (unsigned)max; fd++) close((int)fd);
}

static int compare_fds(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x > y) - (x < y);
}

/* The seccomp listener goes to the broker over this socket (syscall hook); -1 without --notify-to. */
static int notify_fd = -1;

/* Puts the hook at o->hook_fd, keeps the passed fds at their numbers (no longer close-on-exec), the
 * report fd and the notify socket (both close-on-exec, above every other), and closes every other
 * fd above stdio. Returns the report fd, or -1. */
static int arrange_fds(const struct options *o) {
  int rep = -1;
  int above = (o->hook_fd > o->hook_from ? o->hook_fd : o->hook_from) + 1;
  for (int k = 0; k < o->npass; k++)
    if (o->pass_fds[k] >= above) above = o->pass_fds[k] + 1;
  if (above <= o->notify_to) above = o->notify_to + 1;
  if (o->report_from >= 0) {
    if (above <= o->report_from) above = o->report_from + 1;
    rep = fcntl(o->report_from, F_DUPFD_CLOEXEC, above);
    if (rep < 0) {
      perror("openhook-launch: report fd");
      _exit(EXIT_REFUSED);
    }
    if (o->report_from != o->hook_from) close(o->report_from);
    report_fd = rep;
    above = rep + 1;
  }
  if (o->notify_to >= 0) {
    notify_fd = fcntl(o->notify_to, F_DUPFD_CLOEXEC, above);
    if (notify_fd < 0) fatal("fds", errno, "the notify socket");
    if (o->notify_to != o->hook_from && o->notify_to != o->report_from) close(o->notify_to);
  }
  for (int k = 0; k < o->npass; k++) {
    if (fcntl(o->pass_fds[k], F_SETFD, 0) < 0) {
      static char what[64];
      snprintf(what, sizeof what, "fd %d to pass (--pass-fd) is not open", o->pass_fds[k]);
      fatal("fds", errno, what);
    }
  }
  int type;
  socklen_t len = sizeof type;
  if (getsockopt(o->hook_from, SOL_SOCKET, SO_TYPE, &type, &len) < 0) fatal("fds", errno, "the hook fd is not a socket");
  if (o->hook_from != o->hook_fd) {
    if (dup2(o->hook_from, o->hook_fd) < 0) fatal("fds", errno, "dup2 of the hook fd");
    close(o->hook_from);
  } else if (fcntl(o->hook_fd, F_SETFD, 0) < 0) {
    fatal("fds", errno, "clearing close-on-exec on the hook fd");
  }
  int *keep = malloc(((size_t)o->npass + 3) * sizeof *keep);
  if (!keep) fatal("fds", ENOMEM, "malloc");
  int nkeep = 0;
  keep[nkeep++] = o->hook_fd;
  for (int k = 0; k < o->npass; k++) keep[nkeep++] = o->pass_fds[k];
  if (rep >= 0) keep[nkeep++] = rep;
  if (notify_fd >= 0) keep[nkeep++] = notify_fd;
  qsort(keep, (size_t)nkeep, sizeof *keep, compare_fds);
  unsigned lo = 3;
  for (int k = 0; k < nkeep; k++) {
    if ((unsigned)keep[k] > lo) close_from_to(lo, (unsigned)keep[k] - 1);
    if ((unsigned)keep[k] + 1 > lo) lo = (unsigned)keep[k] + 1;
  }
  close_from_to(lo, ~0U);
  free(keep);
  emit("fds", "hook", num((unsigned)o->hook_fd), NULL);
  for (int k = 0; k < o->npass; k++) emit("fds", "pass", num((unsigned)o->pass_fds[k]), NULL);
  emit("fds", "closed", o->npass ? "all but stdio, the hook and the passed fds" : "all but stdio and the hook", NULL);
  return rep;
}

/* ---- Landlock -------------------------------------------------------------------------------- */

static const char *const fs_right_names[] = {
  "execute", "write_file", "read_file", "read_dir", "remove_dir", "remove_file", "make_char", "make_dir",
  "make_reg", "make_sock", "make_fifo", "make_block", "make_sym", "refer", "truncate", "ioctl_dev",
};

static const char *rights_text(uint64_t rights, char *buf, size_t cap) {
  size_t n = 0;
  buf[0] = '\0';
  for (unsigned b = 0; b < sizeof fs_right_names / sizeof *fs_right_names; b++) {
    if (!(rights & (1ULL << b))) continue;
    n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? "," : "", fs_right_names[b]);
    if (n >= cap) break;
  }
  return n ? buf : "-";
}

static uint64_t rights_of(const char *letters) {
  uint64_t r = 0;
  for (const char *c = letters; *c; c++) {
    switch (*c) {
    case 'r': r |= OH_LL_FS_READ_FILE | OH_LL_FS_READ_DIR; break;
    case 'x': r |= OH_LL_FS_EXECUTE; break;
    case 'w': r |= OH_LL_FS_WRITE_FILE; break;
    case 't': r |= OH_LL_FS_TRUNCATE; break;
    case 'i': r |= OH_LL_FS_IOCTL_DEV; break;
    default: usage("--path ACCESS letters are r, x, w, t, i");
    }
  }
  return r;
}

/* Returns the ABI it enforced (0 if Landlock is unavailable and that was allowed). */
static int apply_landlock(const struct options *o) {
  long abi = syscall(__NR_landlock_create_ruleset, NULL, 0, OH_LANDLOCK_CREATE_RULESET_VERSION);
  if (abi < 0) {
    int err = errno;
    const char *why = err == ENOSYS ? "the kernel has no Landlock"
                      : err == EOPNOTSUPP ? "Landlock is disabled (not in the kernel's lsm= list)"
                                          : "landlock_create_ruleset";
    if (!o->allow_unconfined) fatal("landlock", err, why);
    emit("landlock", "unavailable", errname(err), why, NULL);
    return 0;
  }
  int used = abi > OH_LANDLOCK_ABI_KNOWN ? OH_LANDLOCK_ABI_KNOWN : (int)abi;
  emit("landlock", "abi", num((unsigned long long)abi), num((unsigned)used), NULL);
  long errata = syscall(__NR_landlock_create_ruleset, NULL, 0, OH_LANDLOCK_CREATE_RULESET_ERRATA);
  if (errata >= 0) emit("landlock", "errata", num((unsigned long long)errata), NULL);

  struct oh_landlock_ruleset_attr attr = {
    .handled_access_fs = oh_landlock_fs_rights(used),
    .handled_access_net = 0, /* network is not this tool's business: see docs/run.md */
    .scoped = oh_landlock_scopes(used),
  };
  char text[512];
  emit("landlock", "handled", rights_text(attr.handled_access_fs, text, sizeof text), NULL);
  emit("landlock", "scoped",
       attr.scoped ? "abstract_unix_socket,signal" : "-", NULL);

  int ruleset = (int)syscall(__NR_landlock_create_ruleset, &attr, oh_landlock_attr_size(used), 0);
  if (ruleset < 0) fatal("landlock", errno, "landlock_create_ruleset");

  for (int i = 0; i < o->npaths; i++) {
    const struct path_grant *g = &o->paths[i];
    int fd = open(g->path, O_PATH | O_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (g->device) fatal("device", err, g->path);
      if (err == ENOENT || err == ENOTDIR || err == EACCES || err == ELOOP) {
        emit("landlock", "skip", errname(err), g->path, NULL);
        continue;
      }
      fatal("landlock", err, g->path);
    }
    struct stat st;
    if (fstat(fd, &st) < 0) fatal("landlock", errno, g->path);
    /* O_PATH never opened the device itself; its driver sees only the program's own open. */
    if (g->device && !S_ISCHR(st.st_mode)) fatal("device", ENODEV, g->path);
    uint64_t want = rights_of(g->access) & attr.handled_access_fs;
    if (!S_ISDIR(st.st_mode)) want &= OH_LL_FS_FILE_RIGHTS;
    if (want == 0) {
      close(fd);
      emit("landlock", "skip", "no-rights", g->path, NULL);
      continue;
    }
    struct oh_landlock_path_beneath_attr rule = {.allowed_access = want, .parent_fd = fd};
    if (syscall(__NR_landlock_add_rule, ruleset, OH_LANDLOCK_RULE_PATH_BENEATH, &rule, 0) < 0)
      fatal("landlock", errno, g->path);
    close(fd);
    emit("landlock", "rule", rights_text(want, text, sizeof text), S_ISDIR(st.st_mode) ? "beneath" : "file", g->path, NULL);
    if (g->device)
      emit("device", "grant", rights_text(want, text, sizeof text),
           attr.handled_access_fs & OH_LL_FS_IOCTL_DEV ? "ioctl-enforced" : "ioctl-unrestricted", g->path, NULL);
  }
  if (syscall(__NR_landlock_restrict_self, ruleset, 0) < 0) fatal("landlock", errno, "landlock_restrict_self");
  close(ruleset);
  emit("landlock", "enforced", num((unsigned)used), NULL);
  return used;
}

/* ---- capabilities ---------------------------------------------------------------------------- */

/* A program confined by Landlock but holding CAP_SYS_MODULE, CAP_SYS_RAWIO or CAP_SYS_ADMIN could
 * load kernel code or reach hardware: Landlock does not stop that. So every capability goes. With
 * no_new_privs, execve cannot give any back (not even to uid 0). */
static void drop_capabilities(void) {
  struct __user_cap_header_struct head = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
  struct __user_cap_data_struct data[2];
  if (syscall(SYS_capget, &head, data) < 0) fatal("capabilities", errno, "capget");
  int had = data[0].permitted || data[1].permitted || data[0].effective || data[1].effective ||
            data[0].inheritable || data[1].inheritable;
  int bounding = 0;
  int can_setpcap = (data[CAP_TO_INDEX(CAP_SETPCAP)].effective & CAP_TO_MASK(CAP_SETPCAP)) != 0;
  if (can_setpcap) {
    for (int cap = 0; cap < 64; cap++) {
      int r = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
      if (r < 0) break; /* EINVAL: past the last capability this kernel knows */
      if (r == 1) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) fatal("capabilities", errno, "PR_CAPBSET_DROP");
        bounding++;
      }
    }
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
    fatal("capabilities", errno, "PR_CAP_AMBIENT_CLEAR_ALL");
  memset(data, 0, sizeof data);
  if (syscall(SYS_capset, &head, data) < 0) fatal("capabilities", errno, "capset");
  emit("capabilities", had ? "dropped" : "none", can_setpcap ? "bounding-dropped" : "bounding-kept",
       num((unsigned)bounding), NULL);
}

/* ---- seccomp --------------------------------------------------------------------------------- */

enum cond { ALWAYS, ARG_LOW_EQ, ARG_NONZERO, UNIX_NOT_STREAM };

struct sc_rule {
  const char *name;
  int nr;
  enum cond cond;
  int arg;
  uint32_t value;
  const char *cond_text;
  uint32_t action;
};

#define ERRNO(e) (SECCOMP_RET_ERRNO | ((e) & SECCOMP_RET_DATA))
#define RULE(sys, act) {#sys, __NR_##sys, ALWAYS, 0, 0, "-", act}
#define RULE_ARG(sys, a, v, text, act) {#sys, __NR_##sys, ARG_LOW_EQ, a, v, text, act}

/* The syscalls refused beyond Landlock, and why (docs/run.md says the same for people):
 *
 * - io_uring: its operations are not syscalls, so no seccomp filter can see them; ENOSYS makes
 *   programs (libuv, liburing users) fall back to plain syscalls.
 * - open_by_handle_at, name_to_handle_at: open a file by handle, with no path for Landlock to
 *   check; and turn paths into reusable handles.
 * - ptrace: PTRACE_O_SUSPEND_SECCOMP lifts the filter from a tracee; tracing is also a way to make
 *   another confined process do things. Landlock already forbids tracing outside the domain.
 * - socket(AF_UNIX): Landlock (up to ABI 7) does not check connect() to a pathname UNIX socket, so a
 *   confined program could ask any unconfined service for fds (another broker with a wider
 *   policy, a container daemon). socketpair() stays allowed; --allow-unix-sockets lifts this.
 *   Under the syscall hook (--notify-to), which traps connect() and bind() and has the broker
 *   decide and perform them by path, only SOCK_DGRAM (and any other type) stays refused: a
 *   datagram names its destination in each sendto()/sendmsg(), which no filter can see, while a
 *   stream or seqpacket socket reaches a path only through connect() (docs/security.md).
 * - path-based metadata changes (chmod, chown, xattrs, times, file_setattr): Landlock does not
 *   check them, and "no write anywhere" includes a file's mode and owner. fd-based forms (fchmod,
 *   fchown, fsetxattr, futimens) stay allowed: they act on files the program already holds.
 * - truncate(2) by path, when Landlock is older than ABI 3 and cannot check it.
 *   With the syscall hook, the path-based metadata changes other than xattrs and truncate are
 *   trapped instead, and the broker answers them by the policy (see `metadata` below).
 * - ioctl TIOCSTI and TIOCLINUX: push keystrokes into the terminal, to be run by the shell after
 *   the program exits.
 * - a syscall number above the newest reviewed one: ENOSYS (see NR_REVIEWED_MAX).
 * - a foreign architecture, or x32: the numbers above mean other syscalls there; the process is
 *   killed.
 */
static int collect_rules(struct sc_rule *out, int landlock_abi, int allow_unix_sockets, int hooked) {
  /* With the hook, xattrs by path stay refused, as "not supported here": cp -a and tar then fall
   * back to chmod (trapped, and decided by the policy) instead of failing to preserve an ACL. */
  const uint32_t xattr = hooked ? ERRNO(EOPNOTSUPP) : ERRNO(EPERM);
  const struct sc_rule always[] = {
    RULE(io_uring_setup, ERRNO(ENOSYS)),
    RULE(io_uring_enter, ERRNO(ENOSYS)),
    RULE(io_uring_register, ERRNO(ENOSYS)),
    RULE(open_by_handle_at, ERRNO(EPERM)),
    RULE(name_to_handle_at, ERRNO(EPERM)),
    RULE(ptrace, ERRNO(EPERM)),
    RULE_ARG(ioctl, 1, TIOCSTI, "cmd==TIOCSTI", ERRNO(EPERM)),
    RULE_ARG(ioctl, 1, TIOCLINUX, "cmd==TIOCLINUX", ERRNO(EPERM)),
    RULE(setxattr, xattr),
    RULE(lsetxattr, xattr),
    RULE(removexattr, xattr),
    RULE(lremovexattr, xattr),
    RULE(setxattrat, xattr),
    RULE(removexattrat, xattr),
    RULE(file_setattr, ERRNO(EPERM)),
  };
  /* With the syscall hook these are trapped and answered by the policy instead (src/hook/fileops.ts).
   * They must not be refused here: the kernel takes the strictest answer of all filters, and ERRNO
   * wins over USER_NOTIF, so a rule here would shadow the trap. */
  const struct sc_rule metadata[] = {
#ifdef __NR_chmod
    RULE(chmod, ERRNO(EPERM)),
#endif
    RULE(fchmodat, ERRNO(EPERM)),
    RULE(fchmodat2, ERRNO(EPERM)),
#ifdef __NR_chown
    RULE(chown, ERRNO(EPERM)),
#endif
#ifdef __NR_lchown
    RULE(lchown, ERRNO(EPERM)),
#endif
    RULE(fchownat, ERRNO(EPERM)),
#ifdef __NR_utime
    RULE(utime, ERRNO(EPERM)),
#endif
#ifdef __NR_utimes
    RULE(utimes, ERRNO(EPERM)),
#endif
#ifdef __NR_futimesat
    RULE(futimesat, ERRNO(EPERM)),
#endif
    {"utimensat", __NR_utimensat, ARG_NONZERO, 1, 0, "path!=NULL", ERRNO(EPERM)},
  };
  int n = 0;
  for (size_t i = 0; i < sizeof always / sizeof *always; i++) out[n++] = always[i];
  if (!hooked)
    for (size_t i = 0; i < sizeof metadata / sizeof *metadata; i++) out[n++] = metadata[i];
  if (!allow_unix_sockets && !hooked) out[n++] = (struct sc_rule)RULE_ARG(socket, 0, AF_UNIX, "domain==AF_UNIX", ERRNO(EACCES));
  if (!allow_unix_sockets && hooked)
    out[n++] = (struct sc_rule){"socket", __NR_socket, UNIX_NOT_STREAM, 0, AF_UNIX, "domain==AF_UNIX,type!=STREAM,SEQPACKET", ERRNO(EACCES)};
  if (landlock_abi < 3 && !hooked) out[n++] = (struct sc_rule)RULE(truncate, ERRNO(EPERM));
  return n;
}

#ifdef OH_AUDIT_ARCH
#define ARG_LOW(i) (offsetof(struct seccomp_data, args) + 8 * (i))
#define ARG_HIGH(i) (ARG_LOW(i) + 4)
#define LD(off) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (off))
#define JEQ(v, t, f) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (v), (t), (f))
#define JGE(v, t, f) BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, (v), (t), (f))
#define JGT(v, t, f) BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, (v), (t), (f))
#define RET(v) BPF_STMT(BPF_RET | BPF_K, (v))

/* What both filters begin with: a call of another architecture kills the process (its numbers would
 * mean other syscalls), and so does an x32 call on x86_64 (the same numbers with a high bit, which
 * no rule below would match). Leaves the syscall number loaded; returns the instructions written. */
static int filter_prologue(struct sock_filter *f) {
  int n = 0;
  f[n++] = (struct sock_filter)LD(offsetof(struct seccomp_data, arch));
  f[n++] = (struct sock_filter)JEQ(OH_AUDIT_ARCH, 1, 0);
  f[n++] = (struct sock_filter)RET(SECCOMP_RET_KILL_PROCESS);
  f[n++] = (struct sock_filter)LD(offsetof(struct seccomp_data, nr));
#ifdef OH_X32_SYSCALL_BIT
  f[n++] = (struct sock_filter)JGE(OH_X32_SYSCALL_BIT, 0, 1);
  f[n++] = (struct sock_filter)RET(SECCOMP_RET_KILL_PROCESS);
#endif
  return n;
}

/* With the syscall number loaded: if it is nr and the 64-bit argument arg is not 0 (both words are
 * compared), falls through to the next instruction (the caller's RET), else jumps past it; the
 * accumulator then holds an argument word if the number was nr. Returns the instructions written. */
static int nr_and_arg_nonzero(struct sock_filter *f, uint32_t nr, unsigned arg) {
  int n = 0;
  f[n++] = (struct sock_filter)JEQ(nr, 0, 5);
  f[n++] = (struct sock_filter)LD(ARG_LOW(arg));
  f[n++] = (struct sock_filter)JEQ(0, 0, 2); /* low word not 0: the RET */
  f[n++] = (struct sock_filter)LD(ARG_HIGH(arg));
  f[n++] = (struct sock_filter)JEQ(0, 1, 0); /* both words 0: past the RET */
  return n;
}

/* Builds the filter: arch check, then one block per rule, each of which either returns the rule's
 * action or falls through to the next block; the end allows. Arguments are compared on their low
 * 32 bits where the kernel itself truncates them (an int domain, an unsigned ioctl command), so
 * setting high bits cannot slip past a rule. */
static int build_filter(struct sock_filter *f, const struct sc_rule *rules, int nrules) {
  int n = filter_prologue(f);
  f[n++] = (struct sock_filter)JGT(NR_REVIEWED_MAX, 0, 1);
  f[n++] = (struct sock_filter)RET(ERRNO(ENOSYS));
  for (int i = 0; i < nrules; i++) {
    const struct sc_rule *r = &rules[i];
    f[n++] = (struct sock_filter)LD(offsetof(struct seccomp_data, nr));
    switch (r->cond) {
    case ALWAYS:
      f[n++] = (struct sock_filter)JEQ((uint32_t)r->nr, 0, 1);
      break;
    case ARG_LOW_EQ:
      f[n++] = (struct sock_filter)JEQ((uint32_t)r->nr, 0, 3);
      f[n++] = (struct sock_filter)LD(ARG_LOW(r->arg));
      f[n++] = (struct sock_filter)JEQ(r->value, 0, 1);
      break;
    case ARG_NONZERO:
      n += nr_and_arg_nonzero(f + n, (uint32_t)r->nr, (unsigned)r->arg);
      break;
    case UNIX_NOT_STREAM:
      /* domain (arg 0) == value and the type (arg 1, less SOCK_NONBLOCK and SOCK_CLOEXEC, which
       * live above SOCK_TYPE_MASK) is neither SOCK_STREAM nor SOCK_SEQPACKET: refuse. */
      f[n++] = (struct sock_filter)JEQ((uint32_t)r->nr, 0, 7);
      f[n++] = (struct sock_filter)LD(ARG_LOW(r->arg));
      f[n++] = (struct sock_filter)JEQ(r->value, 0, 5);
      f[n++] = (struct sock_filter)LD(ARG_LOW(1));
      f[n++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xf); /* SOCK_TYPE_MASK */
      f[n++] = (struct sock_filter)JEQ(SOCK_STREAM, 2, 0); /* allowed: next rule */
      f[n++] = (struct sock_filter)JEQ(SOCK_SEQPACKET, 1, 0);
      break;
    }
    f[n++] = (struct sock_filter)RET(r->action);
  }
  f[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
  return n;
}
#endif

static const char *action_text(uint32_t action) {
  static char buf[32];
  if ((action & SECCOMP_RET_ACTION_FULL) == SECCOMP_RET_ERRNO) {
    snprintf(buf, sizeof buf, "errno %s", errname((int)(action & SECCOMP_RET_DATA)));
    return buf;
  }
  return action == SECCOMP_RET_KILL_PROCESS ? "kill-process" : "other";
}

static void apply_seccomp(const struct options *o, int landlock_abi) {
#ifndef OH_AUDIT_ARCH
  if (!o->allow_unconfined) fatal("seccomp", ENOSYS, "no seccomp filter for this architecture");
  emit("seccomp", "unavailable", "ENOSYS", "no seccomp filter for this architecture", NULL);
#else
  struct sc_rule rules[64];
  int nrules = collect_rules(rules, landlock_abi, o->allow_unix_sockets, notify_fd >= 0);
  static struct sock_filter filter[512];
  int len = build_filter(filter, rules, nrules);
  struct sock_fprog prog = {.len = (unsigned short)len, .filter = filter};
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) {
    int err = errno;
    if (!o->allow_unconfined) fatal("seccomp", err, "the kernel refused the seccomp filter");
    emit("seccomp", "unavailable", errname(err), "the kernel refused the seccomp filter", NULL);
    return;
  }
  emit("seccomp", "arch", OH_ARCH_NAME, NULL);
  emit("seccomp", "rule", "*", "arch!=" OH_ARCH_NAME, "kill-process", NULL);
#ifdef OH_X32_SYSCALL_BIT
  emit("seccomp", "rule", "*", "x32", "kill-process", NULL);
#endif
  emit("seccomp", "rule", "*", "nr>" STR(NR_REVIEWED_MAX), "errno ENOSYS", NULL);
  for (int i = 0; i < nrules; i++) emit("seccomp", "rule", rules[i].name, rules[i].cond_text, action_text(rules[i].action), NULL);
  emit("seccomp", "enforced", num((unsigned)len), NULL);
#endif
}

/* ---- the syscall hook ----------------------------------------------------------------------- */

#ifndef __NR_openat2
#define __NR_openat2 437
#endif
#ifndef SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#define SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (1UL << 5)
#endif

/* The syscalls the broker answers (src/hook/syscalls.ts has the handler of each). Adding one is a
 * line here and an entry there. */
static const struct {
  const char *name;
  int nr;
} trapped[] = {
#ifdef __NR_open
  {"open", __NR_open},
#endif
  {"openat", __NR_openat},
  {"openat2", __NR_openat2},
#ifdef __NR_creat
  {"creat", __NR_creat},
#endif
#ifdef __NR_mkdir
  {"mkdir", __NR_mkdir},
#endif
  {"mkdirat", __NR_mkdirat},
#ifdef __NR_unlink
  {"unlink", __NR_unlink},
#endif
  {"unlinkat", __NR_unlinkat},
#ifdef __NR_rmdir
  {"rmdir", __NR_rmdir},
#endif
#ifdef __NR_rename
  {"rename", __NR_rename},
#endif
#ifdef __NR_renameat
  {"renameat", __NR_renameat},
#endif
  {"renameat2", __NR_renameat2},
#ifdef __NR_link
  {"link", __NR_link},
#endif
  {"linkat", __NR_linkat},
#ifdef __NR_symlink
  {"symlink", __NR_symlink},
#endif
  {"symlinkat", __NR_symlinkat},
#ifdef __NR_chmod
  {"chmod", __NR_chmod},
#endif
  {"fchmodat", __NR_fchmodat},
  {"fchmodat2", __NR_fchmodat2},
#ifdef __NR_chown
  {"chown", __NR_chown},
#endif
#ifdef __NR_lchown
  {"lchown", __NR_lchown},
#endif
  {"fchownat", __NR_fchownat},
#ifdef __NR_utime
  {"utime", __NR_utime},
#endif
#ifdef __NR_utimes
  {"utimes", __NR_utimes},
#endif
#ifdef __NR_futimesat
  {"futimesat", __NR_futimesat},
#endif
  {"truncate", __NR_truncate},
#ifdef __NR_access
  {"access", __NR_access},
#endif
  {"faccessat", __NR_faccessat},
  {"faccessat2", __NR_faccessat2},
#ifdef __NR_mknod
  {"mknod", __NR_mknod},
#endif
  {"mknodat", __NR_mknodat},
};

/* connect() and bind(), trapped for every family (the address is in the program's memory, where
 * no filter can look): the broker performs them for AF_UNIX path sockets, by the policy
 * (src/hook/sockets.ts). Not trapped with --allow-unix-sockets, which leaves UNIX sockets to the
 * program (and Landlock) as before. */
static const struct {
  const char *name;
  int nr;
} trapped_sockets[] = {
  {"connect", __NR_connect},
  {"bind", __NR_bind},
};

/* The second filter: the open family becomes a notification on a listener fd, which goes to the
 * broker over notify_fd. The deny filter above still runs too: the kernel takes the strictest
 * answer of all filters (kill, then errno, then user-notif, then allow).
 *
 * WAIT_KILLABLE_RECV: once the broker has received a notification, the program waits for the
 * answer without being interrupted by signals other than fatal ones. Without it, a signal handler
 * would abandon the call the broker is performing, and the kernel would restart it: the broker
 * would do the work twice (a create twice: EEXIST), and a program with a fast timer could loop. */
static void apply_notify(int allow_unix_sockets) {
#ifndef OH_AUDIT_ARCH
  fatal("notify", ENOSYS, "no seccomp filter for this architecture");
#else
  static struct sock_filter f[256];
  int n = filter_prologue(f);
  for (size_t i = 0; i < sizeof trapped / sizeof *trapped; i++) {
    f[n++] = (struct sock_filter)JEQ((uint32_t)trapped[i].nr, 0, 1);
    f[n++] = (struct sock_filter)RET(SECCOMP_RET_USER_NOTIF);
  }
  /* utimensat with a path (utimensat(fd, NULL, ...) is futimens: it acts on a file the program
   * holds, and the kernel runs it). Both words of the pointer are compared. */
  n += nr_and_arg_nonzero(f + n, (uint32_t)__NR_utimensat, 1);
  f[n++] = (struct sock_filter)RET(SECCOMP_RET_USER_NOTIF);
  /* The block above may leave an argument word in the accumulator: what follows compares numbers. */
  f[n++] = (struct sock_filter)LD(offsetof(struct seccomp_data, nr));
  for (size_t i = 0; !allow_unix_sockets && i < sizeof trapped_sockets / sizeof *trapped_sockets; i++) {
    f[n++] = (struct sock_filter)JEQ((uint32_t)trapped_sockets[i].nr, 0, 1);
    f[n++] = (struct sock_filter)RET(SECCOMP_RET_USER_NOTIF);
  }
  f[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
  struct sock_fprog prog = {.len = (unsigned short)n, .filter = f};
  int listener = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                              SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, &prog);
  if (listener < 0) {
    int err = errno;
    fatal("notify", err, err == EINVAL || err == ENOSYS
                             ? "the kernel has no seccomp user notification with WAIT_KILLABLE_RECV (Linux 5.19 or later)"
                             : "the kernel refused the seccomp user-notification filter");
  }
  /* From here on, an open by this process would wait for a broker that has no listener yet: hand it
   * over before anything else, and keep no copy. */
  char byte = 'L';
  struct iovec iov = {.iov_base = &byte, .iov_len = 1};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
  struct cmsghdr *c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &listener, sizeof(int));
  ssize_t sent;
  do sent = sendmsg(notify_fd, &m, MSG_NOSIGNAL);
  while (sent < 0 && errno == EINTR);
  int err = errno;
  close(listener);
  close(notify_fd);
  notify_fd = -1;
  if (sent != 1) fatal("notify", err, "cannot send the listener fd to the broker");
  emit("notify", "arch", OH_ARCH_NAME, NULL);
  for (size_t i = 0; i < sizeof trapped / sizeof *trapped; i++) emit("notify", "trap", trapped[i].name, NULL);
  emit("notify", "trap", "utimensat", "path!=NULL", NULL);
  for (size_t i = 0; !allow_unix_sockets && i < sizeof trapped_sockets / sizeof *trapped_sockets; i++)
    emit("notify", "trap", trapped_sockets[i].name, NULL);
  emit("notify", "enforced", "user-notif", "wait-killable-recv", num((unsigned)n), NULL);
#endif
}

/* ---- main ------------------------------------------------------------------------------------ */

static _Noreturn void confine_and_exec(const struct options *o, int rep);

#ifndef OH_EXEC
int main(int argc, char **argv) {
  struct options o;
  parse_options(argc, argv, &o);
  confine_and_exec(&o, arrange_fds(&o));
}
#endif

/* Steps 3 to 9 of the top comment, shared with openhook-exec (native/exec.c). */
static _Noreturn void confine_and_exec(const struct options *o, int rep) {
  if (o->parent) {
    /* The death signal survives exec (no set-user-ID exec can happen under no_new_privs). Checking
     * the parent after the prctl closes the race with a parent that died before it. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) fatal("parent", errno, "PR_SET_PDEATHSIG");
    if (getppid() != (pid_t)o->parent) fatal("parent", ESRCH, "the launching process is gone");
    emit("parent", "watched", num((unsigned long long)o->parent), "SIGKILL", NULL);
  }

  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) fatal("no_new_privs", errno, "PR_SET_NO_NEW_PRIVS");
  emit("no_new_privs", "set", NULL);

  int abi = apply_landlock(o);
  drop_capabilities();
  apply_seccomp(o, abi);
  if (notify_fd >= 0) apply_notify(o->allow_unix_sockets);

  if (o->wait && rep >= 0) {
    emit("ready", NULL);
    char go;
    ssize_t r;
    do r = read(rep, &go, 1);
    while (r < 0 && errno == EINTR);
    if (r != 1) _exit(EXIT_REFUSED); /* the caller is gone: do not start CMD unattended */
  }
  emit("exec", o->argv[0], NULL);
  execvp(o->argv[0], o->argv);
  int err = errno;
  emit("error", "exec", errname(err), o->argv[0], NULL);
  _exit(err == ENOENT || err == ENOTDIR ? EXIT_NOT_FOUND : EXIT_CANNOT_EXEC);
}
