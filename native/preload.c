/* openhook's interposer: an LD_PRELOAD library that routes a program's own file opens to the broker.
 *
 * A program started with `openhook run --preload` (or by hand, with OPENHOOK_FD or OPENHOOK_SOCKET
 * in its environment) calls open(), fopen() and friends as usual. Each open whose name lies outside
 * the pass-through directories becomes an RFC QEMU_OPEN request with the absolute name, and the
 * program gets back what open(2) would have given it: the broker's fd, or -1 with the broker's errno.
 * See docs/interposer.md for what is wrapped and what is not.
 *
 * This library is not a security boundary: the launcher's Landlock domain is. A wrong routing choice
 * here costs a failed open, never an escape. What matters here is correctness in real programs:
 *
 *   Threads   Requests go over a small pool of private connections. A thread takes a free slot with
 *             one compare-and-swap, makes its request, and gives the slot back: two requests never
 *             share a connection at once, so replies cannot be mixed. No lock is ever held, so a
 *             signal handler that opens while its thread is mid-request simply takes another slot.
 *   Fork      Each slot remembers the pid that made its connection. A process never uses a
 *             connection it did not make: after fork the child makes its own (and an atfork handler
 *             closes the parent's copies in the child). Private connections come from the broker's
 *             CONNECT extension on the inherited hook fd, which carries nothing but CONNECT requests:
 *             its replies are interchangeable, so processes racing on it get one each.
 *   Exec      The hook fd (OPENHOOK_FD) stays inherited; private connections are close-on-exec.
 *   Signals   Nothing on the request path allocates or locks: buffers are on the stack, the pool is
 *             static, and the calls are raw system calls (which are not cancellation points either,
 *             so a cancelled thread can never leave a connection mid-request).
 *   No hook   Without OPENHOOK_FD or OPENHOOK_SOCKET every call goes straight to the real one.
 */
#define _GNU_SOURCE
/* node-gyp builds with _FILE_OFFSET_BITS=64, which makes the headers rename open to open64 and so on.
 * Both names are separate symbols that programs link against: define each one itself. */
#undef _FILE_OFFSET_BITS
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* ---- wire (docs/protocol.md) ------------------------------------------------------------------- */

enum { CMD_QEMU_OPEN = 1, CMD_CONNECT = 0x102 };
enum { OPEN_HEADER = 18, REPLY_SIZE = 12, CONNECT_SIZE = 12 };
/* Names are at most PATH_MAX bytes with the NUL, as the kernel takes them. */
#define NAME_CAP PATH_MAX

/* ---- configuration, fixed at start-up ---------------------------------------------------------- */

enum hook_kind { HOOK_NONE, HOOK_FD, HOOK_SOCKET };

/* A list of directory prefixes, normalised, copied out of the environment (which may change later). */
#define PREFIX_MAX 64
struct prefixes {
  char text[4096];
  const char *p[PREFIX_MAX];
  size_t n[PREFIX_MAX];
  int count;
};

static struct {
  enum hook_kind kind;
  /* HOOK_FD: the inherited socket, and what it was at start-up, to notice if the program closed it */
  int fd;
  dev_t dev;
  ino_t ino;
  /* HOOK_SOCKET: the broker's path, and the socket type that worked last */
  struct sockaddr_un addr;
  socklen_t addrlen;
  atomic_int stream;
  /* read-only opens here go to the real call */
  struct prefixes passthrough;
  /* every open here goes to the real call: kernel interfaces whose names mean something else to the
   * broker (/proc/self is the broker's own) or which the broker never opens (devices) */
  struct prefixes direct;
  /* OPENHOOK_TRACE: one line per wrapped call on this fd, or -1 */
  int trace;
} cfg = {.kind = HOOK_NONE, .fd = -1, .trace = -1};

static const char DEFAULT_PASSTHROUGH[] = "/usr:/lib:/lib64:/bin:/sbin:/etc";
static const char DEFAULT_DIRECT[] = "/dev:/proc:/sys";

/* The process umask, which open(2) would apply and the broker cannot know: read at start-up and
 * followed through the umask() wrapper. */
static atomic_uint current_umask = 022;

/* ---- the real functions ------------------------------------------------------------------------ */

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*open2_fn)(const char *, int);
typedef int (*openat2_fn)(int, const char *, int);
typedef int (*creat_fn)(const char *, mode_t);
typedef FILE *(*fopen_fn)(const char *, const char *);
typedef FILE *(*freopen_fn)(const char *, const char *, FILE *);
typedef mode_t (*umask_fn)(mode_t);

static struct {
  open_fn open, open64;
  openat_fn openat, openat64;
  open2_fn open_2, open64_2;
  openat2_fn openat_2, openat64_2;
  creat_fn creat, creat64;
  fopen_fn fopen, fopen64;
  freopen_fn freopen, freopen64;
  umask_fn umask;
} real;

/* Which wrapper a call came through, so that a call routed to the real function reaches the same one
 * (keeping glibc's own checks, such as __open_2's abort on O_CREAT without a mode). */
enum which { W_OPEN, W_OPEN64, W_OPENAT, W_OPENAT64, W_OPEN_2, W_OPEN64_2, W_OPENAT_2, W_OPENAT64_2, W_CREAT, W_CREAT64 };

static const char *const which_name[] = {"open", "open64", "openat", "openat64", "__open_2", "__open64_2",
                                         "__openat_2", "__openat64_2", "creat", "creat64"};

/* ---- small helpers that never allocate ------------------------------------------------------- */

static bool needs_mode(int flags) { return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE; }

static size_t put_str(char *out, size_t at, size_t cap, const char *s) {
  while (*s && at < cap) out[at++] = *s++;
  return at;
}

static size_t put_mem(char *out, size_t at, size_t cap, const char *s, size_t n) {
  while (n-- && at < cap) out[at++] = *s++;
  return at;
}

static size_t put_uint(char *out, size_t at, size_t cap, unsigned long v, unsigned base) {
  char tmp[24];
  int n = 0;
  do tmp[n++] = "0123456789abcdef"[v % base];
  while ((v /= base) && n < (int)sizeof tmp);
  while (n && at < cap) out[at++] = tmp[--n];
  return at;
}

static int parse_int(const char *s, int *out) {
  long v = 0;
  if (!s || !*s) return -1;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return -1;
    v = v * 10 + (*s - '0');
    if (v > INT_MAX) return -1;
  }
  *out = (int)v;
  return 0;
}

/* Collapses "//", "." and ".." in an absolute name, in place (the result is never longer). ".." is
 * taken lexically, as the broker decides lexically; a name whose last component is "", "." or ".."
 * must be a directory, as open(2) requires, and *dir_only reports it. Returns the new length. */
static size_t normalise(char *p, size_t n, bool *dir_only) {
  size_t r = 0, w = 0;
  *dir_only = false;
  while (r < n) {
    while (r < n && p[r] == '/') r++;
    if (r == n) {
      if (w > 0) *dir_only = true;
      break;
    }
    size_t s = r;
    while (r < n && p[r] != '/') r++;
    size_t len = r - s;
    *dir_only = false;
    if (len == 1 && p[s] == '.') {
      *dir_only = true;
      continue;
    }
    if (len == 2 && p[s] == '.' && p[s + 1] == '.') {
      while (w > 0 && p[w - 1] != '/') w--;
      if (w > 0) w--;
      *dir_only = true;
      continue;
    }
    p[w++] = '/';
    memmove(p + w, p + s, len);
    w += len;
  }
  if (w == 0) p[w++] = '/';
  p[w] = '\0';
  return w;
}

static bool under(const struct prefixes *list, const char *path, size_t n) {
  for (int i = 0; i < list->count; i++) {
    size_t k = list->n[i];
    if (k == 1) return true; /* "/" */
    if (n >= k && memcmp(path, list->p[i], k) == 0 && (n == k || path[k] == '/')) return true;
  }
  return false;
}

/* Parses "DIR:DIR:..." into list (empty entries and relative ones are ignored). */
static void parse_prefixes(struct prefixes *list, const char *spec) {
  list->count = 0;
  size_t at = 0, len = strlen(spec);
  if (len >= sizeof list->text) len = sizeof list->text - 1;
  memcpy(list->text, spec, len);
  list->text[len] = '\0';
  char *s = list->text;
  while (at <= len && list->count < PREFIX_MAX) {
    size_t start = at;
    while (at < len && s[at] != ':') at++;
    s[at] = '\0';
    if (s[start] == '/') {
      bool unused;
      size_t n = normalise(s + start, at - start, &unused);
      list->p[list->count] = s + start;
      list->n[list->count] = n;
      list->count++;
    }
    at++;
  }
}

/* ---- tracing (OPENHOOK_TRACE=1): which opens went where ---------------------------------------- */

static void trace(const char *route, const char *fn, const char *path, size_t pathlen, int flags, int result, int err) {
  if (cfg.trace < 0) return;
  char line[NAME_CAP + 128];
  size_t at = 0, cap = sizeof line - 1;
  at = put_str(line, at, cap, "openhook: ");
  at = put_str(line, at, cap, route);
  at = put_str(line, at, cap, " ");
  at = put_str(line, at, cap, fn);
  at = put_str(line, at, cap, " ");
  at = put_mem(line, at, cap, path, pathlen);
  at = put_str(line, at, cap, " flags=0x");
  at = put_uint(line, at, cap, (unsigned)flags, 16);
  if (result >= 0) {
    at = put_str(line, at, cap, " = ");
    at = put_uint(line, at, cap, (unsigned long)result, 10);
  } else if (err) {
    at = put_str(line, at, cap, " = -1 errno ");
    at = put_uint(line, at, cap, (unsigned long)err, 10);
  }
  line[at++] = '\n';
  ssize_t unused = syscall(SYS_write, cfg.trace, line, at);
  (void)unused;
}

/* ---- connections --------------------------------------------------------------------------------- */

/* A slot of the pool. `busy` is taken with a compare-and-swap and given back with a release store;
 * the other fields belong to whoever holds the slot. */
#define POOL_SIZE 32
struct slot {
  atomic_int busy;
  int fd;
  bool stream;
  pid_t pid;
  dev_t dev;
  ino_t ino;
};
static struct slot pool[POOL_SIZE];

static pid_t my_pid(void) { return (pid_t)syscall(SYS_getpid); }

static struct slot *slot_take(void) {
  for (int i = 0; i < POOL_SIZE; i++) {
    int expected = 0;
    if (atomic_compare_exchange_strong_explicit(&pool[i].busy, &expected, 1, memory_order_acquire, memory_order_relaxed))
      return &pool[i];
  }
  return NULL;
}

static void slot_give(struct slot *s) { atomic_store_explicit(&s->busy, 0, memory_order_release); }

static void drop_connection(struct slot *s) {
  if (s->fd >= 0) syscall(SYS_close, s->fd);
  s->fd = -1;
}

/* After fork, in the child (one thread): the parent's connections are the parent's. */
static void after_fork_in_child(void) {
  for (int i = 0; i < POOL_SIZE; i++) {
    if (pool[i].fd >= 0) syscall(SYS_close, pool[i].fd);
    pool[i].fd = -1;
    atomic_store_explicit(&pool[i].busy, 0, memory_order_relaxed);
  }
}

static bool same_socket(int fd, dev_t dev, ino_t ino) {
  struct stat st;
  return syscall(SYS_fstat, fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == dev && st.st_ino == ino;
}

/* Moves a private connection out of the low fd numbers, which the program may expect open(2) to hand
 * out in order (close(1); open(...) to redirect stdout, say). Keeps fd if that is impossible. */
static int move_high(int fd) {
  struct rlimit lim;
  if (syscall(SYS_getrlimit, RLIMIT_NOFILE, &lim) != 0) return fd;
  rlim_t soft = lim.rlim_cur;
  long base = soft >= 2048 ? 1024 : (long)(soft / 2);
  if (base <= fd) return fd;
  int high = (int)syscall(SYS_fcntl, fd, F_DUPFD_CLOEXEC, base);
  if (high < 0) return fd;
  syscall(SYS_close, fd);
  return high;
}

/* Result codes of one exchange besides a broker's -errno: the connection is unusable. */
enum { BROKEN = 1 };

static ssize_t send_all(int fd, const void *buf, size_t len) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = syscall(SYS_sendto, fd, (const char *)buf + done, len - done, MSG_NOSIGNAL, NULL, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return done ? -EIO : -errno; /* part of a frame went: the stream is out of step */
    }
    done += (size_t)n;
  }
  return (ssize_t)done;
}

/* Sends one request and receives its 12-byte reply. Returns 0 with *fd set (an fd came), a negative
 * errno from the broker, or BROKEN. *sent tells whether the request left (a retry on a fresh
 * connection is safe only if it did not). recv_flags may hold MSG_CMSG_CLOEXEC. */
static int exchange(int sock, bool stream, const void *req, size_t len, uint32_t cmd, int recv_flags, int *fd, bool *sent) {
  *fd = -1;
  *sent = false;
  ssize_t s = send_all(sock, req, len);
  if (s < 0) {
    if (s == -EIO) *sent = true;
    return BROKEN;
  }
  *sent = true;

  uint32_t reply[3];
  size_t have = 0;
  int got[8], ngot = 0;
  bool bad = false;
  while (have < sizeof reply) {
    union {
      char buf[CMSG_SPACE(sizeof(int) * 8)];
      struct cmsghdr align;
    } ctl;
    struct iovec iov = {(char *)reply + have, sizeof reply - have};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
    /* A seqpacket reply longer than 12 bytes sets MSG_TRUNC: not a reply we know. */
    ssize_t n = syscall(SYS_recvmsg, sock, &m, recv_flags);
    if (n < 0 && errno == EINTR) continue;
    for (struct cmsghdr *c = n >= 0 ? CMSG_FIRSTHDR(&m) : NULL; c; c = CMSG_NXTHDR(&m, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t j = 0; j < k; j++) {
        int one;
        memcpy(&one, CMSG_DATA(c) + j * sizeof(int), sizeof one);
        if (ngot < 8) got[ngot++] = one;
        else syscall(SYS_close, one);
      }
    }
    if (n <= 0) {
      bad = true;
      break;
    }
    if (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) bad = true;
    have += (size_t)n;
    if (!stream) break;
  }
  int32_t result = (int32_t)reply[2];
  if (!bad && (have != sizeof reply || reply[0] != REPLY_SIZE || (reply[1] != cmd && reply[1] != 0) || result > 0)) bad = true;
  if (!bad && result == 0 && ngot != 1) bad = true;
  if (bad) {
    for (int i = 0; i < ngot; i++) syscall(SYS_close, got[i]);
    return BROKEN;
  }
  if (result == 0) {
    *fd = got[0];
    return 0;
  }
  for (int i = 0; i < ngot; i++) syscall(SYS_close, got[i]); /* an error reply with fds: drop them */
  return result;
}

/* Makes a fresh private connection for this process: CONNECT on the hook fd, or connect() by path.
 * Returns the fd or -errno. */
static int make_connection(bool *stream) {
  int fd;
  if (cfg.kind == HOOK_FD) {
    /* The program may have closed the hook fd, and the number may now name something else. */
    if (!same_socket(cfg.fd, cfg.dev, cfg.ino)) return -EIO;
    uint32_t req[3] = {CONNECT_SIZE, CMD_CONNECT, 0};
    bool sent;
    int r = exchange(cfg.fd, false, req, sizeof req, CMD_CONNECT, MSG_CMSG_CLOEXEC, &fd, &sent);
    if (r == BROKEN) return -EIO;
    if (r < 0) return r == -EPROTO ? -EIO : r; /* a broker without CONNECT cannot serve us safely */
    *stream = false;
  } else {
    int types[2] = {SOCK_SEQPACKET, SOCK_STREAM};
    int first = atomic_load_explicit(&cfg.stream, memory_order_relaxed) ? 1 : 0;
    fd = -1;
    for (int i = 0; i < 2; i++) {
      int type = types[(first + i) % 2];
      fd = (int)syscall(SYS_socket, AF_UNIX, type | SOCK_CLOEXEC, 0);
      if (fd < 0) return -errno;
      int r;
      do r = (int)syscall(SYS_connect, fd, &cfg.addr, cfg.addrlen);
      while (r < 0 && errno == EINTR);
      if (r == 0) {
        *stream = type == SOCK_STREAM;
        atomic_store_explicit(&cfg.stream, *stream, memory_order_relaxed);
        break;
      }
      int e = errno;
      syscall(SYS_close, fd);
      fd = -1;
      if (e != EPROTOTYPE) return -EIO; /* no broker there (now): ENOENT, ECONNREFUSED */
    }
    if (fd < 0) return -EIO;
  }
  return move_high(fd);
}

static int slot_ready(struct slot *s, pid_t pid) {
  if (s->fd >= 0 && s->pid != pid) drop_connection(s); /* made by the parent before a fork */
  if (s->fd >= 0 && !same_socket(s->fd, s->dev, s->ino)) s->fd = -1; /* the program closed it: not ours now */
  if (s->fd >= 0) return 0;
  bool stream = false;
  int fd = make_connection(&stream);
  if (fd < 0) return fd;
  struct stat st;
  if (syscall(SYS_fstat, fd, &st) != 0) {
    int e = errno;
    syscall(SYS_close, fd);
    return -e;
  }
  s->fd = fd;
  s->stream = stream;
  s->pid = pid;
  s->dev = st.st_dev;
  s->ino = st.st_ino;
  return 0;
}

/* One brokered open: frame holds the request. Returns an fd or -errno. */
static int broker_request(const void *frame, size_t len, bool cloexec) {
  int recv_flags = cloexec ? MSG_CMSG_CLOEXEC : 0;
  pid_t pid = my_pid();
  struct slot spare = {.fd = -1};
  struct slot *s = slot_take();
  /* Every slot busy (32 requests in flight in this process): a connection for this request alone. */
  struct slot *use = s ? s : &spare;
  int result = -EIO;
  for (int attempt = 0; attempt < 2; attempt++) {
    int r = slot_ready(use, pid);
    if (r < 0) {
      result = r;
      break;
    }
    int fd;
    bool sent;
    r = exchange(use->fd, use->stream, frame, len, CMD_QEMU_OPEN, recv_flags, &fd, &sent);
    if (r != BROKEN) {
      result = r == 0 ? fd : r;
      break;
    }
    drop_connection(use);
    /* The broker went away (or restarted) before it saw the request: one retry on a fresh
     * connection is safe. After it saw it, the request may have taken effect: say EIO. */
    if (sent) break;
  }
  if (s) slot_give(s);
  else drop_connection(&spare);
  return result;
}

/* ---- start-up -------------------------------------------------------------------------------- */

static atomic_int init_state; /* 0 not yet, 1 running, 2 done */

static void resolve_real(void) {
  real.open = (open_fn)dlsym(RTLD_NEXT, "open");
  real.open64 = (open_fn)dlsym(RTLD_NEXT, "open64");
  real.openat = (openat_fn)dlsym(RTLD_NEXT, "openat");
  real.openat64 = (openat_fn)dlsym(RTLD_NEXT, "openat64");
  real.open_2 = (open2_fn)dlsym(RTLD_NEXT, "__open_2");
  real.open64_2 = (open2_fn)dlsym(RTLD_NEXT, "__open64_2");
  real.openat_2 = (openat2_fn)dlsym(RTLD_NEXT, "__openat_2");
  real.openat64_2 = (openat2_fn)dlsym(RTLD_NEXT, "__openat64_2");
  real.creat = (creat_fn)dlsym(RTLD_NEXT, "creat");
  real.creat64 = (creat_fn)dlsym(RTLD_NEXT, "creat64");
  real.fopen = (fopen_fn)dlsym(RTLD_NEXT, "fopen");
  real.fopen64 = (fopen_fn)dlsym(RTLD_NEXT, "fopen64");
  real.freopen = (freopen_fn)dlsym(RTLD_NEXT, "freopen");
  real.freopen64 = (freopen_fn)dlsym(RTLD_NEXT, "freopen64");
  real.umask = (umask_fn)dlsym(RTLD_NEXT, "umask");
}

static void configure(void) {
  const char *t = getenv("OPENHOOK_TRACE");
  if (t && *t && strcmp(t, "0") != 0) cfg.trace = 2;

  const char *pass = getenv("OPENHOOK_PASSTHROUGH");
  parse_prefixes(&cfg.passthrough, pass ? pass : DEFAULT_PASSTHROUGH);
  const char *direct = getenv("OPENHOOK_DIRECT");
  parse_prefixes(&cfg.direct, direct ? direct : DEFAULT_DIRECT);

  mode_t m = (mode_t)syscall(SYS_umask, 0);
  syscall(SYS_umask, m);
  atomic_store(&current_umask, m & 0777);

  int fd;
  const char *fdtext = getenv("OPENHOOK_FD");
  const char *path = getenv("OPENHOOK_SOCKET");
  if (fdtext && parse_int(fdtext, &fd) == 0) {
    struct stat st;
    int type = 0;
    socklen_t tl = sizeof type;
    if (syscall(SYS_fstat, fd, &st) == 0 && S_ISSOCK(st.st_mode) &&
        syscall(SYS_getsockopt, fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_SEQPACKET) {
      cfg.fd = fd;
      cfg.dev = st.st_dev;
      cfg.ino = st.st_ino;
      cfg.kind = HOOK_FD;
    } else if (cfg.trace >= 0) {
      static const char msg[] = "openhook: OPENHOOK_FD is not a SOCK_SEQPACKET socket here; passing every open through\n";
      ssize_t unused = syscall(SYS_write, cfg.trace, msg, sizeof msg - 1);
      (void)unused;
    }
  }
  if (cfg.kind == HOOK_NONE && path && *path) {
    size_t n = strlen(path);
    if (n < sizeof cfg.addr.sun_path) {
      cfg.addr.sun_family = AF_UNIX;
      memcpy(cfg.addr.sun_path, path, n + 1);
      cfg.addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
      cfg.kind = HOOK_SOCKET;
    }
  }
  for (int i = 0; i < POOL_SIZE; i++) pool[i].fd = -1;
  if (cfg.kind != HOOK_NONE) pthread_atfork(NULL, NULL, after_fork_in_child);
}

/* Runs once, from the constructor, or earlier if another library's constructor opens a file first.
 * A call that arrives while it runs (from dlsym, say) goes to the real function. */
static void ensure_init(void) {
  if (atomic_load_explicit(&init_state, memory_order_acquire) == 2) return;
  int expected = 0;
  if (!atomic_compare_exchange_strong(&init_state, &expected, 1)) return;
  resolve_real();
  configure();
  atomic_store_explicit(&init_state, 2, memory_order_release);
}

__attribute__((constructor)) static void preload_init(void) { ensure_init(); }

static bool hooked(void) {
  ensure_init();
  return atomic_load_explicit(&init_state, memory_order_acquire) == 2 && cfg.kind != HOOK_NONE;
}

/* ---- routing ------------------------------------------------------------------------------------ */

static int real_open(enum which w, int dirfd, const char *path, int flags, mode_t mode) {
  switch (w) {
  case W_OPEN: if (real.open) return real.open(path, flags, mode); break;
  case W_OPEN64: if (real.open64) return real.open64(path, flags, mode); break;
  case W_OPENAT: if (real.openat) return real.openat(dirfd, path, flags, mode); break;
  case W_OPENAT64: if (real.openat64) return real.openat64(dirfd, path, flags, mode); break;
  case W_OPEN_2: if (real.open_2) return real.open_2(path, flags); break;
  case W_OPEN64_2: if (real.open64_2) return real.open64_2(path, flags); break;
  case W_OPENAT_2: if (real.openat_2) return real.openat_2(dirfd, path, flags); break;
  case W_OPENAT64_2: if (real.openat64_2) return real.openat64_2(dirfd, path, flags); break;
  case W_CREAT: if (real.creat) return real.creat(path, mode); break;
  case W_CREAT64: if (real.creat64) return real.creat64(path, mode); break;
  }
  return (int)syscall(SYS_openat, dirfd, path, flags, mode);
}

enum { ROUTE_DIRECT = 1, ROUTE_BROKER = 2 };

/* Decides where an open goes. For the broker, writes the whole request into frame and its length
 * into *len, and may add O_DIRECTORY to *flags (a name ending in "/" or "." must be a directory).
 * Returns ROUTE_DIRECT, ROUTE_BROKER, or -errno to fail the call here. */
static int route(int dirfd, const char *path, int *flags, mode_t mode, char *frame, size_t *len) {
  if (*flags & O_PATH) return ROUTE_DIRECT; /* no I/O through it, and the broker refuses it */
  if (path[0] == '\0') return ROUTE_DIRECT; /* ENOENT, from the kernel */
  char *name = frame + OPEN_HEADER;
  size_t n = 0, plen = strlen(path);
  if (path[0] != '/') {
    if (dirfd == AT_FDCWD) {
      long r = syscall(SYS_getcwd, name, NAME_CAP);
      if (r <= 0 || name[0] != '/') return ROUTE_DIRECT; /* deleted or unreachable cwd: let the kernel say */
      n = strlen(name);
    } else {
      char link[32];
      size_t k = put_str(link, 0, sizeof link, "/proc/self/fd/");
      k = put_uint(link, k, sizeof link - 1, (unsigned)dirfd, 10);
      link[k] = '\0';
      long r = syscall(SYS_readlinkat, AT_FDCWD, link, name, NAME_CAP - 1);
      /* Not a directory we can name (EBADF, a pipe, a deleted directory): the kernel gives the
       * right error, or the right file. */
      if (r <= 0 || name[0] != '/') return ROUTE_DIRECT;
      n = (size_t)r;
      static const char deleted[] = " (deleted)";
      if (n >= sizeof deleted - 1 && memcmp(name + n - (sizeof deleted - 1), deleted, sizeof deleted - 1) == 0) return ROUTE_DIRECT;
    }
    if (n + 1 + plen >= NAME_CAP) return -ENAMETOOLONG;
    name[n++] = '/';
  } else if (plen >= NAME_CAP) {
    return -ENAMETOOLONG;
  }
  memcpy(name + n, path, plen);
  n += plen;
  bool dir_only;
  n = normalise(name, n, &dir_only);

  if (under(&cfg.direct, name, n)) return ROUTE_DIRECT;
  int acc = *flags & O_ACCMODE;
  bool read_only = acc == O_RDONLY && !(*flags & (O_CREAT | O_TRUNC)) && (*flags & O_TMPFILE) != O_TMPFILE;
  if (read_only && under(&cfg.passthrough, name, n)) return ROUTE_DIRECT;

  if (dir_only && n > 1) {
    if (*flags & O_CREAT) return -EISDIR;
    *flags |= O_DIRECTORY;
  }
  uint32_t size = (uint32_t)(OPEN_HEADER + n), cmd = CMD_QEMU_OPEN, f = (uint32_t)*flags;
  uint32_t m = needs_mode(*flags) ? (uint32_t)(mode & ~atomic_load(&current_umask) & 07777) : 0;
  uint16_t l16 = (uint16_t)n;
  memcpy(frame, &size, 4);
  memcpy(frame + 4, &cmd, 4);
  memcpy(frame + 8, &f, 4);
  memcpy(frame + 12, &m, 4);
  memcpy(frame + 16, &l16, 2);
  *len = size;
  return ROUTE_BROKER;
}

#define PASS_THROUGH INT_MIN /* brokered(): the call belongs to the real function */

/* Routes an open and, where it goes to the broker, asks the broker (and traces it). Returns the fd,
 * -errno, or PASS_THROUGH. */
static int brokered(const char *fn, int dirfd, const char *path, int flags, mode_t mode) {
  char frame[OPEN_HEADER + NAME_CAP];
  size_t len = 0;
  int rflags = flags;
  int r = route(dirfd, path, &rflags, mode, frame, &len);
  if (r == ROUTE_DIRECT) return PASS_THROUGH;
  int fd = r < 0 ? r : broker_request(frame, len, (flags & O_CLOEXEC) != 0);
  if (cfg.trace >= 0) trace("broker", fn, r < 0 ? path : frame + OPEN_HEADER, r < 0 ? strlen(path) : len - OPEN_HEADER, rflags, fd, fd < 0 ? -fd : 0);
  return fd;
}

/* The common body of every open wrapper. */
static int do_open(enum which w, int dirfd, const char *path, int flags, mode_t mode) {
  if (!hooked() || path == NULL) return real_open(w, dirfd, path, flags, mode);
  /* The checked variants without a mode abort on O_CREAT: glibc's own check should say so. */
  if (w >= W_OPEN_2 && w <= W_OPENAT64_2 && needs_mode(flags)) return real_open(w, dirfd, path, flags, mode);
  int saved = errno;
  int fd = brokered(which_name[w], dirfd, path, flags, mode);
  if (fd == PASS_THROUGH) {
    fd = real_open(w, dirfd, path, flags, mode);
    if (cfg.trace >= 0) {
      int e = errno;
      trace("direct", which_name[w], path, strlen(path), flags, fd, e);
      errno = e;
    }
    return fd;
  }
  if (fd < 0) {
    errno = -fd;
    return -1;
  }
  errno = saved;
  return fd;
}

/* ---- the wrapped functions ------------------------------------------------------------------------ */

#define MODE_ARG(flags)                                                                            \
  mode_t mode = 0;                                                                                 \
  if (needs_mode(flags)) {                                                                         \
    va_list ap;                                                                                    \
    va_start(ap, flags);                                                                           \
    mode = (mode_t)va_arg(ap, int);                                                                \
    va_end(ap);                                                                                    \
  }

EXPORT int open(const char *path, int flags, ...) {
  MODE_ARG(flags);
  return do_open(W_OPEN, AT_FDCWD, path, flags, mode);
}

EXPORT int open64(const char *path, int flags, ...) {
  MODE_ARG(flags);
  return do_open(W_OPEN64, AT_FDCWD, path, flags, mode);
}

EXPORT int openat(int dirfd, const char *path, int flags, ...) {
  MODE_ARG(flags);
  return do_open(W_OPENAT, dirfd, path, flags, mode);
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...) {
  MODE_ARG(flags);
  return do_open(W_OPENAT64, dirfd, path, flags, mode);
}

/* _FORTIFY_SOURCE's checked variants: called without a mode, which glibc insists on. */
EXPORT int __open_2(const char *path, int flags) { return do_open(W_OPEN_2, AT_FDCWD, path, flags, 0); }
EXPORT int __open64_2(const char *path, int flags) { return do_open(W_OPEN64_2, AT_FDCWD, path, flags, 0); }
EXPORT int __openat_2(int dirfd, const char *path, int flags) { return do_open(W_OPENAT_2, dirfd, path, flags, 0); }
EXPORT int __openat64_2(int dirfd, const char *path, int flags) { return do_open(W_OPENAT64_2, dirfd, path, flags, 0); }

EXPORT int creat(const char *path, mode_t mode) { return do_open(W_CREAT, AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode); }
EXPORT int creat64(const char *path, mode_t mode) { return do_open(W_CREAT64, AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode); }

EXPORT mode_t umask(mode_t mask) {
  ensure_init();
  mode_t old = real.umask ? real.umask(mask) : (mode_t)syscall(SYS_umask, mask);
  atomic_store(&current_umask, mask & 0777);
  return old;
}

/* fopen's mode string as open(2) flags, as glibc reads it; -1 for a mode fopen refuses. */
static int fopen_flags(const char *mode) {
  int acc, extra;
  switch (mode[0]) {
  case 'r': acc = O_RDONLY; extra = 0; break;
  case 'w': acc = O_WRONLY; extra = O_CREAT | O_TRUNC; break;
  case 'a': acc = O_WRONLY; extra = O_CREAT | O_APPEND; break;
  default: return -1;
  }
  for (const char *p = mode + 1; *p && *p != ','; p++) {
    if (*p == '+') acc = O_RDWR;
    else if (*p == 'x') extra |= O_EXCL;
    else if (*p == 'e') extra |= O_CLOEXEC;
  }
  return acc | extra;
}

/* fopen through the broker: the fd from do_open's path, made a FILE by fdopen. NULL with errno, or
 * *routed = false when the call belongs to the real fopen. */
static FILE *broker_fopen(const char *fn, const char *path, const char *mode, bool *routed) {
  *routed = false;
  if (!hooked() || path == NULL || mode == NULL) return NULL;
  int flags = fopen_flags(mode);
  if (flags < 0) return NULL; /* the real fopen says EINVAL */
  int fd = brokered(fn, AT_FDCWD, path, flags, 0666);
  if (fd == PASS_THROUGH) {
    if (cfg.trace >= 0) trace("direct", fn, path, strlen(path), flags, -1, 0);
    return NULL;
  }
  *routed = true;
  if (fd < 0) {
    errno = -fd;
    return NULL;
  }
  FILE *f = fdopen(fd, mode);
  if (!f) {
    int e = errno;
    syscall(SYS_close, fd);
    errno = e;
  }
  return f;
}

static FILE *call_fopen(fopen_fn fn, const char *name, const char *path, const char *mode) {
  if (!fn) fn = (fopen_fn)dlsym(RTLD_NEXT, name);
  if (!fn) {
    errno = ENOSYS;
    return NULL;
  }
  return fn(path, mode);
}

EXPORT FILE *fopen(const char *path, const char *mode) {
  bool routed;
  FILE *f = broker_fopen("fopen", path, mode, &routed);
  return routed ? f : call_fopen(real.fopen, "fopen", path, mode);
}

EXPORT FILE *fopen64(const char *path, const char *mode) {
  bool routed;
  FILE *f = broker_fopen("fopen64", path, mode, &routed);
  return routed ? f : call_fopen(real.fopen64, "fopen64", path, mode);
}

/* freopen keeps the FILE (and, in glibc, its fd number) and replaces the file under it. glibc does
 * that only by opening a name itself, so the stream is first reopened, with the same mode, on
 * /dev/null (which the launcher always allows), and the brokered fd then takes its fd number. */
static FILE *broker_freopen(freopen_fn fn, const char *name, const char *path, const char *mode, FILE *stream) {
  if (!fn) fn = (freopen_fn)dlsym(RTLD_NEXT, name);
  if (!fn) {
    errno = ENOSYS;
    return NULL;
  }
  if (!hooked() || path == NULL || mode == NULL) return fn(path, mode, stream);
  int flags = fopen_flags(mode);
  if (flags < 0) return fn(path, mode, stream);
  int fd = brokered(name, AT_FDCWD, path, flags, 0666);
  if (fd == PASS_THROUGH) {
    if (cfg.trace >= 0) trace("direct", name, path, strlen(path), flags, -1, 0);
    return fn(path, mode, stream);
  }
  if (fd < 0) {
    /* freopen closes the stream even when the new open fails; an empty name fails after that. */
    fn("", mode, stream);
    errno = -fd;
    return NULL;
  }
  char plain[16];
  size_t k = 0;
  for (const char *p = mode; *p && *p != ',' && k < sizeof plain - 1; p++)
    if (*p != 'x') plain[k++] = *p; /* /dev/null exists: O_EXCL would refuse it */
  plain[k] = '\0';
  FILE *f = fn("/dev/null", plain, stream);
  if (!f) {
    int e = errno;
    syscall(SYS_close, fd);
    errno = e;
    return NULL;
  }
  int target = fileno(f);
  if (syscall(SYS_dup3, fd, target, (flags & O_CLOEXEC) ? O_CLOEXEC : 0) < 0) {
    int e = errno;
    syscall(SYS_close, fd);
    fclose(f);
    errno = e;
    return NULL;
  }
  syscall(SYS_close, fd);
  return f;
}

EXPORT FILE *freopen(const char *path, const char *mode, FILE *stream) { return broker_freopen(real.freopen, "freopen", path, mode, stream); }

EXPORT FILE *freopen64(const char *path, const char *mode, FILE *stream) {
  return broker_freopen(real.freopen64, "freopen64", path, mode, stream);
}
