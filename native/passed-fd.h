/* Receiving one message that carries one fd (SCM_RIGHTS), for the addon (notify.c: the listener
 * from the launch helper) and for openhook-exec (exec.c: the daemon's answer). A header of static
 * functions: exec.c is a program of its own and links none of the addon's parts. */
#ifndef OPENHOOK_PASSED_FD_H
#define OPENHOOK_PASSED_FD_H

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* recvmsg(sock, one buffer of len bytes, flags), tried again on EINTR; add MSG_CMSG_CLOEXEC to
 * flags. Returns what recvmsg returned (errno set on -1). *fd is the first fd the message carried,
 * or -1: any other fd it carried is closed (one is expected; the rest must not leak into this
 * process). *msg_flags is the message's flags (MSG_TRUNC, MSG_CTRUNC: something was cut). */
static inline ssize_t recv_passed_fd(int sock, void *buf, size_t len, int flags, int *fd, int *msg_flags) {
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * 4)];
  } ctl;
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
  ssize_t r;
  do r = recvmsg(sock, &m, flags);
  while (r < 0 && errno == EINTR);
  *fd = -1;
  *msg_flags = r < 0 ? 0 : m.msg_flags;
  if (r < 0) return r;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; i++) {
      int got;
      memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
      if (*fd < 0) *fd = got;
      else close(got);
    }
  }
  return r;
}

#endif
