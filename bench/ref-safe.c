/* ref-safe: the C yardstick that does the same safe work as openhook, so that a benchmark can tell the
 * cost of the safety (the same in any language) from the cost of TypeScript.
 *
 * Same frames, same single epoll thread and same driver (ref-client) as ../shared/bench/ref-broker.c,
 * but each open is done the way openhook's resolver must do it (DESIGN.md, invariants 2 to 4):
 *   - flags allow-listed (access mode 3, O_PATH, O_TMPFILE, unknown bits refused), O_NOCTTY added;
 *   - openat2 with O_PATH beneath the root, RESOLVE_BENEATH | NO_SYMLINKS | NO_MAGICLINKS | NO_XDEV;
 *   - fstat of what was found: only a regular file goes on (a FIFO, device or socket is refused
 *     without ever being opened for I/O), and one with several hard links only for reading;
 *   - reopen of exactly that inode with the real flags through /proc/self/fd, opened once as a
 *     directory fd (what native/files.c does);
 *   - a client's attached fds never enter the table: received with no control buffer;
 *   - with AUDITFILE: one JSON line per decision, formatted with snprintf into a buffer and written
 *     with write() when the buffer fills or 10 ms after the first unwritten line (batched, as
 *     openhook's audit log is; a write() here blocks the loop, where openhook's runs on a thread).
 * It serves every name beneath ROOT (a leading '/' is stripped, as ref-broker does): no policy, since
 * a lookup in C would cost next to nothing beside the syscalls.
 *
 * build: cc -O2 -o ref-safe ref-safe.c     run: ref-safe SOCKPATH ROOTDIR [AUDITFILE]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define ALLOWED_FLAGS (O_ACCMODE | O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC | O_APPEND | O_NONBLOCK | O_DSYNC | O_SYNC | \
                       O_DIRECT | O_LARGEFILE | O_DIRECTORY | O_NOFOLLOW | O_NOATIME | O_CLOEXEC)
#define RESOLVE (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)

static int proc_fd_dir = -1;
static int audit_fd = -1;
static char audit_buf[1 << 16];
static size_t audit_len;
static double audit_since; /* when the oldest unwritten line was added, 0 if none */

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void audit_flush(void) {
  for (size_t off = 0; off < audit_len;) {
    ssize_t n = write(audit_fd, audit_buf + off, audit_len - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    off += (size_t)n;
  }
  audit_len = 0;
  audit_since = 0;
}

static void audit(const char *name, uint32_t flags, int32_t result, pid_t pid) {
  if (audit_fd < 0) return;
  if (sizeof audit_buf - audit_len < 4096 + 256) audit_flush();
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  struct tm tm;
  gmtime_r(&t.tv_sec, &tm);
  int n = snprintf(audit_buf + audit_len, sizeof audit_buf - audit_len,
                   "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"client\":{\"pid\":%d},\"path\":\"/%s\",\"flags\":%u,"
                   "\"decision\":\"%s\",\"errno\":%d}\n",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, t.tv_nsec / 1000000, (int)pid,
                   name, flags, result == 0 ? "allow" : "deny", -result);
  if (n > 0 && (size_t)n < sizeof audit_buf - audit_len) audit_len += (size_t)n;
  if (!audit_since) audit_since = now_ms();
}

static int reply(int conn, int32_t result, int fd) {
  uint32_t hdr[3] = {12, 1, (uint32_t)result};
  struct iovec iov = {hdr, sizeof hdr};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } ctl;
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
  if (fd >= 0) {
    memset(&ctl, 0, sizeof ctl);
    m.msg_control = ctl.buf;
    m.msg_controllen = sizeof ctl.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  return sendmsg(conn, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* The safe open: an fd, or -errno. */
static int safe_open(int root, const char *name, uint32_t flags, uint32_t mode) {
  if ((flags & O_ACCMODE) == O_ACCMODE || (flags & O_PATH) || (flags & __O_TMPFILE) == __O_TMPFILE || (flags & ~ALLOWED_FLAGS))
    return -EINVAL;
  if (flags & O_CREAT) return -EACCES; /* the benchmark only reads; creation is not what is measured */
  (void)mode;
  struct open_how how = {.flags = O_PATH | O_CLOEXEC | (flags & O_NOFOLLOW), .resolve = RESOLVE};
  int path;
  for (int tries = 0;; tries++) {
    path = (int)syscall(SYS_openat2, root, *name ? name : ".", &how, sizeof how);
    if (path >= 0 || errno != EAGAIN || tries == 8) break;
  }
  if (path < 0) return -errno;
  struct stat st;
  int err = 0;
  if (fstat(path, &st) < 0) err = errno;
  else if (!S_ISREG(st.st_mode)) err = S_ISDIR(st.st_mode) ? EISDIR : EACCES;
  else if (flags & O_DIRECTORY) err = ENOTDIR;
  else if (st.st_nlink > 1 && ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC))) err = EACCES;
  int fd = -1;
  if (!err) {
    char num[16];
    int i = sizeof num - 1;
    num[i] = 0;
    unsigned v = (unsigned)path;
    do num[--i] = (char)('0' + v % 10), v /= 10;
    while (v && i > 0);
    fd = openat(proc_fd_dir, num + i, (int)((flags & ~(O_CREAT | O_EXCL | O_NOFOLLOW)) | O_NOCTTY | O_CLOEXEC));
    if (fd < 0) err = errno;
  }
  close(path);
  return err ? -err : fd;
}

static void serve_frame(int conn, int root, char *buf, ssize_t n, pid_t pid) {
  uint32_t size, cmd, flags, mode;
  uint16_t len;
  if (n < 18) { reply(conn, -EPROTO, -1); return; }
  memcpy(&size, buf, 4); memcpy(&cmd, buf + 4, 4); memcpy(&flags, buf + 8, 4);
  memcpy(&mode, buf + 12, 4); memcpy(&len, buf + 16, 2);
  if (cmd != 1 || size != (uint32_t)n || 18u + len != size || len == 0) { reply(conn, -EPROTO, -1); return; }
  char *name = buf + 18;
  name[len] = 0;
  if (memchr(name, 0, len)) { reply(conn, -EINVAL, -1); return; }
  while (*name == '/') name++;
  int fd = safe_open(root, name, flags, mode);
  reply(conn, fd < 0 ? fd : 0, fd);
  audit(name, flags, fd < 0 ? fd : 0, pid);
  if (fd >= 0) close(fd);
}

int main(int argc, char **argv) {
  if (argc != 3 && argc != 4) { fprintf(stderr, "usage: ref-safe SOCKPATH ROOTDIR [AUDITFILE]\n"); return 2; }
  int root = open(argv[2], O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) { perror(argv[2]); return 1; }
  proc_fd_dir = open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (proc_fd_dir < 0) { perror("/proc/self/fd"); return 1; }
  if (argc == 4 && (audit_fd = open(argv[3], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640)) < 0) { perror(argv[3]); return 1; }
  int lsn = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
  unlink(argv[1]);
  if (bind(lsn, (struct sockaddr *)&addr, sizeof addr) || listen(lsn, 512)) { perror("listen"); return 1; }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)lsn << 32}, evs[64];
  epoll_ctl(ep, EPOLL_CTL_ADD, lsn, &ev);
  static char buf[65536 + 64];
  for (;;) {
    int timeout = -1;
    if (audit_since) {
      double left = audit_since + 10 - now_ms();
      if (left <= 0) audit_flush();
      else timeout = (int)left + 1;
    }
    int n = epoll_wait(ep, evs, 64, timeout);
    for (int i = 0; i < n; i++) {
      int fd = (int)(evs[i].data.u64 >> 32);
      pid_t pid = (pid_t)(uint32_t)evs[i].data.u64;
      if (fd == lsn) {
        int c;
        while ((c = accept4(lsn, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0) {
          struct ucred cred = {0};
          socklen_t cl = sizeof cred;
          getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &cl);
          struct epoll_event ce = {.events = EPOLLIN, .data.u64 = (uint64_t)c << 32 | (uint32_t)cred.pid};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
        }
        continue;
      }
      for (;;) {
        struct iovec iov = {buf, sizeof buf - 1};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1}; /* no control buffer: attached fds are dropped */
        ssize_t r = recvmsg(fd, &m, MSG_DONTWAIT);
        if (r < 0 && errno == EAGAIN) break;
        if (r <= 0 && !(m.msg_flags & MSG_CTRUNC)) { close(fd); break; }
        if (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) { reply(fd, -EPROTO, -1); continue; }
        serve_frame(fd, root, buf, r, pid);
      }
    }
  }
}
