/* What the parts that send or receive fds share (sockets.c, replies.c, poller.c). */
#ifndef OPENHOOK_SOCKETS_H
#define OPENHOOK_SOCKETS_H

#include <stddef.h>
#include <sys/socket.h>

#define MAX_FDS_PER_MSG 253 /* SCM_MAX_FD */

/* Attaches n fds to m as one SCM_RIGHTS message, in ctl (CMSG_SPACE(n ints), suitably aligned). */
void attach_fds(struct msghdr *m, void *ctl, const int *fds, size_t n);

#endif
