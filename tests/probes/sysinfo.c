/* What a container process does with sysinfo(2), for the attack suite: asks it plainly, then
 * (with "hostile") hands the supervisor bad buffers and a flood of calls from many threads.
 * Prints one line per result: plain=MiB, null=, kernel=, unmapped= (the call's outcome),
 * threads=GOOD/ALL, after=MiB. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#define THREADS 8
#define CALLS 200

static long call(void *buffer) { return syscall(SYS_sysinfo, buffer); }

static unsigned long mib(const struct sysinfo *info) {
    return (unsigned long)((uint64_t)info->totalram * info->mem_unit >> 20);
}

static const char *outcome(void *buffer) {
    return call(buffer) == 0 ? "written" : strerror(errno);
}

static void *hammer(void *expected) {
    long good = 0;
    for (int n = 0; n < CALLS; n++) {
        struct sysinfo info;
        memset(&info, 0, sizeof info);
        if (call(&info) == 0 && mib(&info) == (uintptr_t)expected)
            good++;
    }
    return (void *)good;
}

int main(int argc, char **argv) {
    struct sysinfo info;
    if (call(&info) != 0) {
        printf("plain=%s\n", strerror(errno));
        return 0;
    }
    printf("plain=%lu\n", mib(&info));
    if (argc < 2 || strcmp(argv[1], "hostile") != 0)
        return 0;
    printf("null=%s\n", outcome(NULL));
    printf("kernel=%s\n", outcome((void *)0xffffffff81000000UL));
    printf("unmapped=%s\n", outcome((void *)0x1000));
    pthread_t threads[THREADS];
    long good = 0;
    for (int t = 0; t < THREADS; t++)
        pthread_create(&threads[t], NULL, hammer, (void *)(uintptr_t)mib(&info));
    for (int t = 0; t < THREADS; t++) {
        void *result;
        pthread_join(threads[t], &result);
        good += (long)result;
    }
    printf("threads=%ld/%d\n", good, THREADS * CALLS);
    memset(&info, 0, sizeof info);
    call(&info);
    printf("after=%lu\n", mib(&info));
    return 0;
}
