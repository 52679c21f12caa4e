/* hook-opens: an ordinary program that opens one file COUNT times (open + close) and reports the
 * mean and the 99th percentile of one open, for the syscall hook's benchmark. Knows nothing of
 * openhook: under the hook each open is trapped; under the interposer it goes over the hook socket.
 *
 *   hook-opens FILE COUNT
 *
 * The first open is made before the clock starts. Exit status 1 if any open failed.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: hook-opens FILE COUNT\n");
    return 2;
  }
  long count = atol(argv[2]), errors = 0;
  double *lat = calloc((size_t)count, sizeof *lat);
  int fd = open(argv[1], O_RDONLY);
  if (fd < 0 || !lat) {
    perror(argv[1]);
    return 1;
  }
  close(fd);
  double t0 = now();
  for (long i = 0; i < count; i++) {
    double t = now();
    fd = open(argv[1], O_RDONLY);
    lat[i] = now() - t;
    if (fd < 0) errors++;
    else close(fd);
  }
  double dt = now() - t0;
  qsort(lat, (size_t)count, sizeof *lat, cmp);
  printf("mean_us %.2f\np99_us %.2f\nerrors %ld\n", dt / count * 1e6, lat[count * 99 / 100] * 1e6, errors);
  return errors ? 1 : 0;
}
