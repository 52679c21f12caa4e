/* openhook-exec: starts a program confined, as a session of a running `openhook serve`, with no
 * Node on the launch path.
 *
 *   openhook-exec --socket PATH --session NAME [--ro PATH]... [--device PATH]... [--pass-fd N]...
 *                 [--hook-fd N] [--allow-unix-sockets] -- CMD ARGS...
 *
 * In order:
 *   1. connects to the daemon's socket (SOCK_SEQPACKET) and asks for session NAME with the SESSION
 *      command (docs/protocol.md), telling it the --ro and --device grants it will add;
 *   2. the daemon decides whether this process (its SO_PEERCRED) may have that session (a policy
 *      section must name it: docs/operations.md); a refusal comes with the daemon's reason, printed
 *      here, and exit status 125;
 *   3. the answer carries the hook socket (OPENHOOK_FD, a connection the daemon serves as that
 *      session) and the base Landlock grants (the system directories and devices `run` grants);
 *   4. from here on it is `openhook-launch` (this file includes launch.c: the same code, not a
 *      copy): fds arranged, no_new_privs, Landlock, capabilities, the deny filter, and the open
 *      family trapped with seccomp user notification, whose listener goes to the daemon over the
 *      session's connection (SCM_RIGHTS), which is then closed;
 *   5. execs CMD, whose pid is the session's pid.
 *
 * The daemon serves the listener until CMD and everything it started have exited. If the daemon
 * goes away first, the kernel answers every trapped call with ENOSYS (the listener is closed).
 *
 * Exit status: 125 refused (by the daemon, or confinement failed), 126 CMD cannot be executed,
 * 127 CMD not found; else CMD's own.
 */
#define OH_EXEC 1
#include "launch.c"

#include <sys/time.h>
#include <sys/un.h>

#include "passed-fd.h"

/* docs/protocol.md, "SESSION (0x104)"; src/protocol/constants.ts. */
#define OH_SESSION 0x104
#define OH_SESSION_HEADER 14
#define OH_REPLY_HEADER 12
#define OH_MAX_REPLY 65536
#define OH_SESSION_NAME_MAX 255
/* What the daemon's closing a connection at once means: its policy lets this uid have no session
 * (`unmatched = "refuse"`), or it is at a connection cap. */
#define CLOSED_UNANSWERED "the daemon closed the connection without answering: its policy grants this uid no session, or it is at its connection cap"
/* How long the daemon may take to answer SESSION before the launcher gives up. */
#define OH_ANSWER_TIMEOUT_S 30

static _Noreturn void refuse(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "openhook-exec: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  _exit(EXIT_REFUSED);
}

static _Noreturn void exec_usage(const char *why) {
  refuse("%s\nusage: openhook-exec --socket PATH --session NAME [--ro PATH]... [--device PATH]... [--pass-fd N]...\n"
         "       [--hook-fd N] [--allow-unix-sockets] -- CMD ARGS...", why);
}

struct exec_options {
  const char *socket_path, *session;
  const char **ro, **devices;
  int nro, ndevices;
  int hook_fd; /* -1: the lowest free number from 3 up */
};

static void append(char *buf, size_t *n, size_t cap, const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (*n + la + lb + 1 > cap) refuse("too many or too long --ro and --device paths");
  memcpy(buf + *n, a, la);
  memcpy(buf + *n + la, b, lb);
  *n += la + lb;
  buf[(*n)++] = '\0';
}

static void put_u32(char *p, uint32_t v) { memcpy(p, &v, 4); }

/* Asks for the session; returns the hook socket, and fills reply (the base grants, NUL-separated). */
static int ask_session(int sock, const struct exec_options *e, char *reply, size_t *reply_len) {
  static char frame[OH_SESSION_HEADER + OH_SESSION_NAME_MAX + 60000];
  size_t nlen = strlen(e->session);
  size_t n = OH_SESSION_HEADER + nlen;
  memcpy(frame + OH_SESSION_HEADER, e->session, nlen);
  for (int i = 0; i < e->nro; i++) append(frame, &n, sizeof frame, "ro ", e->ro[i]);
  for (int i = 0; i < e->ndevices; i++) append(frame, &n, sizeof frame, "device ", e->devices[i]);
  put_u32(frame, (uint32_t)n);
  put_u32(frame + 4, OH_SESSION);
  put_u32(frame + 8, 0);
  uint16_t len16 = (uint16_t)nlen;
  memcpy(frame + 12, &len16, 2);
  ssize_t w;
  do w = send(sock, frame, n, MSG_NOSIGNAL);
  while (w < 0 && errno == EINTR);
  if (w < 0 && (errno == EPIPE || errno == ECONNRESET)) refuse("%s", CLOSED_UNANSWERED);
  if (w != (ssize_t)n) refuse("cannot ask the daemon for session %s: %s", e->session, strerror(errno));

  int fd, flags;
  ssize_t r = recv_passed_fd(sock, reply, OH_MAX_REPLY, MSG_CMSG_CLOEXEC, &fd, &flags);
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) refuse("the daemon did not answer within %d s", OH_ANSWER_TIMEOUT_S);
  /* A connection closed unread at accept is reset: the same answer as a plain close. */
  if (r == 0 || (r < 0 && errno == ECONNRESET)) refuse("%s", CLOSED_UNANSWERED);
  if (r < 0) refuse("no answer from the daemon: %s", strerror(errno));
  uint32_t size, command;
  int32_t result;
  if (r < OH_REPLY_HEADER) refuse("a malformed answer from the daemon");
  memcpy(&size, reply, 4);
  memcpy(&command, reply + 4, 4);
  memcpy(&result, reply + 8, 4);
  if (size != (uint32_t)r || (flags & (MSG_TRUNC | MSG_CTRUNC))) refuse("a malformed answer from the daemon");
  if (result == -EPROTO && command != OH_SESSION)
    refuse("the daemon does not host sessions (an older openhook, or not `openhook serve`)");
  if (command != OH_SESSION) refuse("a malformed answer from the daemon");
  if (result < 0) {
    if (fd >= 0) close(fd);
    int len = (int)(r - OH_REPLY_HEADER);
    if (len > 0) refuse("session %s refused: %.*s (%s)", e->session, len, reply + OH_REPLY_HEADER, errname(-result));
    refuse("session %s refused: %s", e->session, errname(-result));
  }
  if (fd < 0) refuse("the daemon granted session %s but sent no hook socket", e->session);
  *reply_len = (size_t)r - OH_REPLY_HEADER;
  memmove(reply, reply + OH_REPLY_HEADER, *reply_len);
  return fd;
}

int main(int argc, char **argv) {
  (void)parse_options; /* openhook-launch's parser: this program has its own */
  human_prefix = "openhook-exec";
  struct exec_options e = {.hook_fd = -1};
  struct options o = {.hook_from = -1, .report_from = -1, .notify_to = -1};
  e.ro = calloc((size_t)argc, sizeof *e.ro);
  e.devices = calloc((size_t)argc, sizeof *e.devices);
  o.pass_fds = calloc((size_t)argc, sizeof *o.pass_fds);
  if (!e.ro || !e.devices || !o.pass_fds) refuse("out of memory");
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--")) {
      i++;
      break;
    }
    if (!strcmp(a, "--allow-unix-sockets")) o.allow_unix_sockets = 1;
    else if (i + 1 < argc && !strcmp(a, "--socket")) e.socket_path = argv[++i];
    else if (i + 1 < argc && !strcmp(a, "--session")) e.session = argv[++i];
    else if (i + 1 < argc && !strcmp(a, "--ro")) e.ro[e.nro++] = argv[++i];
    else if (i + 1 < argc && !strcmp(a, "--device")) e.devices[e.ndevices++] = argv[++i];
    else if (i + 1 < argc && !strcmp(a, "--hook-fd")) {
      e.hook_fd = parse_count(argv[++i]);
      if (e.hook_fd < 3) exec_usage("--hook-fd must be 3 or more");
    } else if (i + 1 < argc && !strcmp(a, "--pass-fd")) {
      int fd = parse_count(argv[++i]);
      if (fd < 3) exec_usage("--pass-fd must name an fd above stdio");
      o.pass_fds[o.npass++] = fd;
    } else exec_usage("unknown or incomplete option");
  }
  if (i >= argc) exec_usage("no command given");
  if (!e.socket_path) exec_usage("--socket PATH is required");
  if (!e.session || !*e.session) exec_usage("--session NAME is required");
  if (strlen(e.session) > OH_SESSION_NAME_MAX) exec_usage("the session name is longer than 255 bytes");
  for (int k = 0; k < e.nro; k++)
    if (e.ro[k][0] != '/') exec_usage("--ro paths must be absolute");
  for (int k = 0; k < e.ndevices; k++)
    if (e.devices[k][0] != '/') exec_usage("--device paths must be absolute");
  o.argv = argv + i;

  /* Before any fd is made here: a passed fd that is not open would otherwise be taken by one. */
  for (int k = 0; k < o.npass; k++)
    if (fcntl(o.pass_fds[k], F_GETFD) < 0) refuse("fd %d to pass (--pass-fd) is not open", o.pass_fds[k]);
  if (e.hook_fd < 0) {
    e.hook_fd = 3;
    for (int again = 1; again;) {
      again = 0;
      for (int k = 0; k < o.npass; k++)
        if (o.pass_fds[k] == e.hook_fd) e.hook_fd++, again = 1;
    }
  }
  for (int k = 0; k < o.npass; k++)
    if (o.pass_fds[k] == e.hook_fd) exec_usage("--pass-fd names the hook's --hook-fd");

  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(e.socket_path) >= sizeof addr.sun_path) refuse("the socket path %s is too long", e.socket_path);
  strcpy(addr.sun_path, e.socket_path);
  int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (sock < 0) refuse("socket: %s", strerror(errno));
  if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) {
    int err = errno;
    if (err == EPROTOTYPE) refuse("%s is a SOCK_STREAM socket: sessions need the daemon's SOCK_SEQPACKET socket (serve without --stream)", e.socket_path);
    refuse("cannot connect to the daemon at %s: %s", e.socket_path, strerror(err));
  }
  struct timeval tv = {.tv_sec = OH_ANSWER_TIMEOUT_S};
  setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

  static char reply[OH_MAX_REPLY];
  size_t reply_len = 0;
  int hook = ask_session(sock, &e, reply, &reply_len);

  /* The grants: the daemon's base ("ACCESS PATH" entries), then --ro and --device. */
  int nbase = 0;
  for (size_t k = 0; k < reply_len; k++) nbase += reply[k] == '\0';
  o.paths = calloc((size_t)(nbase + e.nro + e.ndevices + 1), sizeof *o.paths);
  if (!o.paths) refuse("out of memory");
  for (size_t k = 0; k < reply_len;) {
    char *entry = reply + k;
    size_t len = strnlen(entry, reply_len - k);
    if (k + len >= reply_len) refuse("a malformed grant from the daemon");
    char *space = strchr(entry, ' ');
    if (!space || space[1] != '/') refuse("a malformed grant from the daemon: %s", entry);
    *space = '\0';
    o.paths[o.npaths].access = entry;
    o.paths[o.npaths++].path = space + 1;
    k += len + 1;
  }
  for (int k = 0; k < e.nro; k++) o.paths[o.npaths++] = (struct path_grant){.access = "rx", .path = e.ro[k]};
  for (int k = 0; k < e.ndevices; k++) o.paths[o.npaths++] = (struct path_grant){.access = "rwti", .path = e.devices[k], .device = 1};

  char fdtext[16];
  snprintf(fdtext, sizeof fdtext, "%d", e.hook_fd);
  if (setenv("OPENHOOK_FD", fdtext, 1) < 0 || unsetenv("OPENHOOK_SOCKET") < 0) refuse("setenv: %s", strerror(errno));

  /* The hook goes to its number; the session's connection carries the listener (and then closes). */
  o.hook_from = hook;
  o.hook_fd = e.hook_fd;
  o.notify_to = sock;
  confine_and_exec(&o, arrange_fds(&o));
}
