/* The one consumer of every stream contender: `consume REF` reads stdin and
 * checks every byte and the length against REF (mmap + memcmp), costing
 * little CPU (the kernel's copy into a 1 MiB buffer, then memcmp).
 * Exit 0: identical; 1: differs or short/long (a message on stderr); 2: usage or I/O.
 * Built by bench/peers.py with `cc -O2`. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define BUF (1 << 20)
static char buf[BUF];

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: consume REF < stream\n"); return 2; }
    int ref = open(argv[1], O_RDONLY);
    struct stat st;
    if (ref < 0 || fstat(ref, &st) < 0) { perror(argv[1]); return 2; }
    size_t size = (size_t)st.st_size;
    const char *map = size ? mmap(NULL, size, PROT_READ, MAP_PRIVATE, ref, 0) : "";
    if (map == MAP_FAILED) { perror("mmap"); return 2; }
    size_t at = 0;
    for (;;) {
        ssize_t n = read(0, buf, BUF);
        if (n < 0) { if (errno == EINTR) continue; perror("read"); return 2; }
        if (n == 0) break;
        if (at + (size_t)n > size) {
            fprintf(stderr, "consume: longer than the reference (%zu bytes)\n", size);
            return 1;
        }
        if (memcmp(buf, map + at, (size_t)n) != 0) {
            fprintf(stderr, "consume: differs within bytes %zu-%zu\n", at, at + (size_t)n - 1);
            return 1;
        }
        at += (size_t)n;
    }
    if (at != size) {
        fprintf(stderr, "consume: %zu bytes, the reference has %zu\n", at, size);
        return 1;
    }
    return 0;
}
