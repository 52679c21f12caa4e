/* The resolver's steps as plain C calls, for files.c's exports and for the pool's threads. Each
 * returns an fd or -errno and never touches JS. */
#ifndef OPENHOOK_FILES_H
#define OPENHOOK_FILES_H

#include <stdint.h>
#include <sys/stat.h>

/* The procfs /proc/self/fd directory fd (opened once), or -errno. */
int proc_fd_dir_get(void);

/* Opens the inode that the O_PATH fd holds, with flags, through /proc/self/fd. */
int reopen_fd(int fd, uint32_t flags);

/* openat2 with O_PATH (the caller passes it) and fstat of what it found. */
int lookup_fd(int dirfd, const char *path, uint32_t flags, uint32_t resolve, struct stat *st);

/* openat2 with O_CREAT|O_EXCL (the caller passes them), then fchmod to exactly mode. */
int create_fd(int dirfd, const char *path, uint32_t flags, uint32_t mode, uint32_t resolve);

#endif
