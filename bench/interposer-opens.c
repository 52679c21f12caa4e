/* interposer-opens: an ordinary program that opens one file COUNT times (open + close), for timing
 * under the interposer. Knows nothing of openhook; prints the same fields as ref-client.
 *
 *   interposer-opens FILE COUNT
 *
 * The first open is made before the clock starts, so that connecting is not counted (ref-client
 * connects before its clock starts too). Exit status 1 if any open failed.
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

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: interposer-opens FILE COUNT\n");
    return 2;
  }
  long count = atol(argv[2]), errors = 0;
  int fd = open(argv[1], O_RDONLY);
  if (fd < 0) {
    perror(argv[1]);
    return 1;
  }
  close(fd);
  double t0 = now();
  for (long i = 0; i < count; i++) {
    fd = open(argv[1], O_RDONLY);
    if (fd < 0) errors++;
    else close(fd);
  }
  double dt = now() - t0;
  printf("opens_per_s %.0f\nmean_us %.2f\nerrors %ld\n", count / dt, dt / count * 1e6, errors);
  return errors ? 1 : 0;
}
