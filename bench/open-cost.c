/* open-cost: what the safe open costs against a plain openat2, with no broker and no socket in the
 * way, so that the safety's share of a brokered open can be named in microseconds.
 *
 *   open-cost ROOTDIR NAME [COUNT]
 *
 * Opens ROOTDIR/NAME (a regular file) COUNT times each way, closing what it opens, and prints the
 * mean in nanoseconds:
 *   direct     openat2(root, NAME, O_RDONLY) beneath the root: what ref-broker.c does
 *   lookup     openat2 with O_PATH, and fstat: the type check's half (the fd is closed)
 *   reopen     opening one O_PATH fd again through /proc/self/fd (a directory fd opened once)
 *   safe       lookup, fstat, reopen, close both: what openhook's resolver and ref-safe.c do
 * Each line is `name ns`. The resolve flags are openhook's (RESOLVE_BENEATH, NO_SYMLINKS,
 * NO_MAGICLINKS, NO_XDEV) in every case.
 *
 * build: cc -O2 -o open-cost open-cost.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define RESOLVE (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

static int beneath(int root, const char *name, int flags) {
  struct open_how how = {.flags = (unsigned)flags | O_CLOEXEC, .resolve = RESOLVE};
  return (int)syscall(SYS_openat2, root, name, &how, sizeof how);
}

static int reopen(int proc, int fd, int flags) {
  char num[16];
  snprintf(num, sizeof num, "%d", fd);
  return openat(proc, num, flags | O_CLOEXEC);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: open-cost ROOTDIR NAME [COUNT]\n");
    return 2;
  }
  long count = argc > 3 ? atol(argv[3]) : 200000;
  int root = open(argv[1], O_PATH | O_DIRECTORY | O_CLOEXEC);
  int proc = open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root < 0 || proc < 0) {
    perror("open");
    return 1;
  }
  const char *name = argv[2];
  struct stat st;
  int probe = beneath(root, name, O_PATH);
  if (probe < 0 || fstat(probe, &st) < 0 || !S_ISREG(st.st_mode)) {
    fprintf(stderr, "%s/%s is not a regular file beneath the root\n", argv[1], name);
    return 1;
  }
  double t;
  for (int round = 0; round < 2; round++) { /* the first round warms caches; the second is printed */
    t = now_ns();
    for (long i = 0; i < count; i++) close(beneath(root, name, O_RDONLY | O_NOCTTY));
    double direct = (now_ns() - t) / count;
    t = now_ns();
    for (long i = 0; i < count; i++) {
      int fd = beneath(root, name, O_PATH);
      fstat(fd, &st);
      close(fd);
    }
    double lookup = (now_ns() - t) / count;
    t = now_ns();
    for (long i = 0; i < count; i++) close(reopen(proc, probe, O_RDONLY | O_NOCTTY));
    double again = (now_ns() - t) / count;
    t = now_ns();
    for (long i = 0; i < count; i++) {
      int path = beneath(root, name, O_PATH);
      if (fstat(path, &st) == 0 && S_ISREG(st.st_mode)) close(reopen(proc, path, O_RDONLY | O_NOCTTY));
      close(path);
    }
    double safe = (now_ns() - t) / count;
    if (round == 1) printf("direct %.0f\nlookup %.0f\nreopen %.0f\nsafe %.0f\n", direct, lookup, again, safe);
  }
  return 0;
}
