/* What notify.c offers the other parts of the addon. */
#ifndef OPENHOOK_NOTIFY_H
#define OPENHOOK_NOTIFY_H

#include <sys/types.h>

/* A copy (close-on-exec) of fd as thread tid (of process tgid) holds it, taken with pidfd_getfd, or
 * -errno: -ESRCH if the thread is gone, -EBADF if there is no such fd, -EPERM if the kernel does not
 * let the broker take it. The tid may have been reused meanwhile: the caller checks NOTIF_ID_VALID
 * afterwards. */
int fetch_fd(pid_t tid, pid_t tgid, int fd);

#endif
