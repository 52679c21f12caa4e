/* The one fd a peer passed with SCM_RIGHTS in a received message, for the addon (notify.c) and for
 * openhook-exec (exec.c), which both expect exactly one. A header of static functions: exec.c is a
 * program of its own and links none of the addon's parts. */
#ifndef OPENHOOK_PASSED_FD_H
#define OPENHOOK_PASSED_FD_H

#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The first fd m carries, or -1; any other fd it carries is closed (one is expected: the rest must
 * not leak into this process). */
static inline int take_passed_fd(struct msghdr *m) {
  int fd = -1;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; i++) {
      int got;
      memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
      if (fd < 0) fd = got;
      else close(got);
    }
  }
  return fd;
}

#endif
