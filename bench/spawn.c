/* bench/spawn.c: run one program and report what it cost, measured from a tiny parent.
 *
 *   spawn OUT ERR PROGRAM [ARG...]
 *
 * Forks, runs PROGRAM with stdout -> OUT, stderr -> ERR, stdin </dev/null, waits for it with
 * wait4() and prints one line: "wall_ns utime_us stime_us maxrss_kib wait_status".
 *
 * Why C: on Linux a child's ru_maxrss includes the RSS its parent had when it forked (exec
 * records the old mm's high-water mark), so a Python parent (10+ MB) would hide the real peak
 * of a small program such as virsh. This parent is ~1 MB.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    struct timespec t0, t1;
    struct rusage ru;
    int status;
    pid_t pid;

    if (argc < 4) {
        fprintf(stderr, "usage: spawn OUT ERR PROGRAM [ARG...]\n");
        return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        int in = open("/dev/null", O_RDONLY);
        int out = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int err = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (in < 0 || out < 0 || err < 0)
            _exit(126);
        dup2(in, 0);
        dup2(out, 1);
        dup2(err, 2);
        execvp(argv[3], argv + 3);
        _exit(127);
    }
    if (wait4(pid, &status, 0, &ru) < 0) {
        perror("wait4");
        return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%lld %lld %lld %ld %d\n",
           (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec),
           (long long)ru.ru_utime.tv_sec * 1000000LL + ru.ru_utime.tv_usec,
           (long long)ru.ru_stime.tv_sec * 1000000LL + ru.ru_stime.tv_usec,
           ru.ru_maxrss, status);
    return 0;
}
