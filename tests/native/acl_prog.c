/* Test program: an AscendCL application (linked against libascendcl.so, as MindSpore or a plain ACL program is),
 * run with libflexnpu preloaded by tests/native/test_*.py. Prints key=value lines.
 *
 *   acl_prog alloc BYTES COUNT THREADS   each thread allocates COUNT blocks, reports, waits for a line on stdin,
 *                                        frees and exits
 *   acl_prog meminfo                     aclrtGetMemInfo(ACL_HBM_MEM) and rtMemGetInfoEx
 *   acl_prog oom BYTES                   one aclrtMalloc and one rtMalloc of BYTES
 *   acl_prog launch N US [THREADS]       N kernels of US microseconds per thread (aclrtLaunchKernel), synchronise
 *   acl_prog mixed N US                  N each of kernel, model execution, op execution, rtKernelLaunch
 *   acl_prog gap N US GAP_MS SYNC        N kernels of US microseconds, synchronise, sleep GAP_MS on the host, N
 *                                        kernels again, synchronise; SYNC: stream (aclrtSynchronizeStream), event
 *                                        (aclrtRecordEvent + aclrtSynchronizeEvent), rt (rtStreamSynchronize)
 *   acl_prog escape BYTES [nodeep]       tries to get around the cap (see test_native_escape.py)
 *   acl_prog fork BYTES                  allocates, forks; the child allocates and launches; both report
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef int aclError;
typedef void *aclrtStream;
typedef void *aclrtEvent;

aclError aclInit(const char *configPath);
aclError aclrtSetDevice(int32_t deviceId);
aclError aclrtCreateStream(aclrtStream *stream);
aclError aclrtMalloc(void **devPtr, size_t size, int policy);
aclError aclrtFree(void *devPtr);
aclError aclrtGetMemInfo(int attr, size_t *free_bytes, size_t *total);
aclError aclrtLaunchKernel(void *funcHandle, uint32_t blockDim, const void *argsData, size_t argsSize,
                           aclrtStream stream);
aclError aclmdlExecuteAsync(uint32_t modelId, const void *input, void *output, aclrtStream stream);
aclError aclopExecuteV2(const char *opType, int numInputs, void *inputDesc[], void *inputs[], int numOutputs,
                        void *outputDesc[], void *outputs[], void *attr, aclrtStream stream);
aclError aclrtSynchronizeStream(aclrtStream stream);
aclError aclrtSynchronizeDevice(void);
aclError aclrtCreateEvent(aclrtEvent *event);
aclError aclrtRecordEvent(aclrtEvent event, aclrtStream stream);
aclError aclrtSynchronizeEvent(aclrtEvent event);
int rtStreamSynchronize(void *stm);
int rtMalloc(void **devPtr, uint64_t size, uint32_t type, uint16_t moduleId);
int rtFree(void *devPtr);
int rtMemGetInfoEx(int type, size_t *free_bytes, size_t *total);
int rtKernelLaunch(const void *stubFunc, uint32_t blockDim, void *args, uint32_t argsSize, void *smDesc, void *stm);

#define ACL_HBM_MEM 1

struct job {
    size_t bytes;
    long count, us;
    long ok, denied, other;
    void **blocks;
};

static void *alloc_thread(void *arg)
{
    struct job *j = arg;
    j->blocks = calloc((size_t)j->count, sizeof(void *));
    for (long i = 0; i < j->count; i++) {
        aclError r = aclrtMalloc(&j->blocks[i], j->bytes, 0);
        if (r == 0)
            j->ok++;
        else if (r == 207001)
            j->denied++;
        else
            j->other++;
    }
    return NULL;
}

static int run_alloc(size_t bytes, long count, int threads)
{
    pthread_t t[64];
    struct job jobs[64];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < threads; i++) {
        jobs[i].bytes = bytes;
        jobs[i].count = count;
        pthread_create(&t[i], NULL, alloc_thread, &jobs[i]);
    }
    long ok = 0, denied = 0, other = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        ok += jobs[i].ok;
        denied += jobs[i].denied;
        other += jobs[i].other;
    }
    printf("ok=%ld\ndenied=%ld\nother=%ld\nready=1\n", ok, denied, other);
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) {
        /* parent gone: free anyway */
    }
    for (int i = 0; i < threads; i++)
        for (long k = 0; k < jobs[i].count; k++)
            if (jobs[i].blocks[k])
                aclrtFree(jobs[i].blocks[k]);
    printf("freed=1\n");
    return 0;
}

static int run_meminfo(void)
{
    size_t f = 0, t = 0, rf = 0, rt = 0;
    aclError r = aclrtGetMemInfo(ACL_HBM_MEM, &f, &t);
    int r2 = rtMemGetInfoEx(ACL_HBM_MEM, &rf, &rt);
    printf("rc=%d\nfree=%zu\ntotal=%zu\nrt_rc=%d\nrt_free=%zu\nrt_total=%zu\n", r, f, t, r2, rf, rt);
    return 0;
}

static int run_oom(size_t bytes)
{
    void *p = NULL, *q = NULL;
    aclError r = aclrtMalloc(&p, bytes, 0);
    int r2 = rtMalloc(&q, bytes, 2, 0);
    printf("acl_rc=%d\nrt_rc=%d\n", r, r2);
    return 0;
}

static void *launch_thread(void *arg)
{
    struct job *j = arg;
    aclrtStream s = NULL;
    aclrtCreateStream(&s);
    uint64_t us = (uint64_t)j->us;
    for (long i = 0; i < j->count; i++) {
        if (aclrtLaunchKernel(NULL, 1, &us, sizeof us, s) == 0)
            j->ok++;
        else
            j->other++;
    }
    aclrtSynchronizeStream(s);
    return NULL;
}

static int run_launch(long n, long us, int threads)
{
    pthread_t t[64];
    struct job jobs[64];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < threads; i++) {
        jobs[i].count = n;
        jobs[i].us = us;
        pthread_create(&t[i], NULL, launch_thread, &jobs[i]);
    }
    long ok = 0, other = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        ok += jobs[i].ok;
        other += jobs[i].other;
    }
    printf("launched=%ld\nfailed=%ld\n", ok, other);
    return 0;
}

static int run_mixed(long n, long us)
{
    aclrtStream s = NULL;
    aclrtCreateStream(&s);
    uint64_t d = (uint64_t)us;
    long ok = 0;
    for (long i = 0; i < n; i++) {
        ok += aclrtLaunchKernel(NULL, 1, &d, sizeof d, s) == 0;
        ok += aclmdlExecuteAsync((uint32_t)us, NULL, NULL, s) == 0;
        ok += aclopExecuteV2("Add", 0, NULL, NULL, 0, NULL, NULL, &d, s) == 0;
        ok += rtKernelLaunch(NULL, 1, &d, sizeof d, NULL, s) == 0;
    }
    aclrtSynchronizeDevice();
    printf("launched=%ld\n", ok);
    return 0;
}

static int run_gap(long n, long us, long gap_ms, const char *sync)
{
    aclrtStream s = NULL;
    aclrtEvent e = NULL;
    aclrtCreateStream(&s);
    if (aclrtCreateEvent(&e) != 0)
        return 3;
    uint64_t d = (uint64_t)us;
    long ok = 0, synced = 0;
    for (int phase = 0; phase < 2; phase++) {
        if (phase) {
            struct timespec gap = {gap_ms / 1000, gap_ms % 1000 * 1000000L};
            while (nanosleep(&gap, &gap) != 0 && errno == EINTR) {
            }
        }
        for (long i = 0; i < n; i++)
            ok += aclrtLaunchKernel(NULL, 1, &d, sizeof d, s) == 0;
        if (!strcmp(sync, "stream"))
            synced += aclrtSynchronizeStream(s) == 0;
        else if (!strcmp(sync, "event"))
            synced += aclrtRecordEvent(e, s) == 0 && aclrtSynchronizeEvent(e) == 0;
        else if (!strcmp(sync, "rt"))
            synced += rtStreamSynchronize(s) == 0;
    }
    printf("launched=%ld\nsynced=%ld\n", ok, synced);
    return 0;
}

typedef aclError malloc_fn(void **, size_t, int);

static int run_escape(size_t bytes, int deepbind)
{
    void *p = NULL;
    unsetenv("FLEXNPU_SHIM_DIR");
    unsetenv("FLEXNPU_ID");
    setenv("FLEXNPU_SHIM_DISABLE", "1", 1);
    printf("after_unsetenv=%d\n", aclrtMalloc(&p, bytes, 0));
    malloc_fn *by_default = (malloc_fn *)dlsym(RTLD_DEFAULT, "aclrtMalloc");
    printf("rtld_default=%d\n", by_default ? by_default(&p, bytes, 0) : -1);
    malloc_fn *by_next = (malloc_fn *)dlsym(RTLD_NEXT, "aclrtMalloc");
    printf("rtld_next=%d\n", by_next ? by_next(&p, bytes, 0) : -1);
    void *h = dlopen("libascendcl.so", RTLD_NOW | RTLD_LOCAL);
    malloc_fn *by_handle = h ? (malloc_fn *)dlsym(h, "aclrtMalloc") : NULL;
    printf("dlopen_handle=%d\n", by_handle ? by_handle(&p, bytes, 0) : -1);
    void *r = dlopen("libruntime.so", RTLD_NOW | RTLD_LOCAL);
    typedef int rt_fn(void **, uint64_t, uint32_t, uint16_t);
    rt_fn *rt = r ? (rt_fn *)dlsym(r, "rtMalloc") : NULL;
    printf("runtime_handle=%d\n", rt ? rt(&p, bytes, 2, 0) : -1);
    if (!deepbind) /* sanitizer runtimes refuse RTLD_DEEPBIND */
        return 0;
    void *d = dlopen("libascendcl.so", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    malloc_fn *by_deep = d ? (malloc_fn *)dlsym(d, "aclrtMalloc") : NULL;
    printf("deepbind_handle=%d\n", by_deep ? by_deep(&p, bytes, 0) : -1);
    return 0;
}

static int run_fork(size_t bytes)
{
    void *p = NULL;
    printf("parent_alloc=%d\n", aclrtMalloc(&p, bytes, 0));
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        void *q = NULL;
        aclrtStream s = NULL;
        aclrtCreateStream(&s);
        uint64_t us = 100;
        int a = aclrtMalloc(&q, bytes, 0);
        int l = aclrtLaunchKernel(NULL, 1, &us, sizeof us, s);
        aclrtSynchronizeStream(s);
        int f = q ? aclrtFree(q) : -1;
        printf("child_alloc=%d\nchild_launch=%d\nchild_free=%d\n", a, l, f);
        fflush(stdout);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    printf("child_exit=%d\nparent_free=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1, aclrtFree(p));
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2 || aclInit(NULL) != 0 || aclrtSetDevice(0) != 0)
        return 2;
    const char *mode = argv[1];
    if (!strcmp(mode, "alloc") && argc == 5)
        return run_alloc(strtoull(argv[2], NULL, 10), atol(argv[3]), atoi(argv[4]));
    if (!strcmp(mode, "meminfo"))
        return run_meminfo();
    if (!strcmp(mode, "oom") && argc == 3)
        return run_oom(strtoull(argv[2], NULL, 10));
    if (!strcmp(mode, "launch") && argc >= 4)
        return run_launch(atol(argv[2]), atol(argv[3]), argc > 4 ? atoi(argv[4]) : 1);
    if (!strcmp(mode, "mixed") && argc == 4)
        return run_mixed(atol(argv[2]), atol(argv[3]));
    if (!strcmp(mode, "gap") && argc == 6)
        return run_gap(atol(argv[2]), atol(argv[3]), atol(argv[4]), argv[5]);
    if (!strcmp(mode, "escape") && argc >= 3)
        return run_escape(strtoull(argv[2], NULL, 10), argc == 3);
    if (!strcmp(mode, "fork") && argc == 3)
        return run_fork(strtoull(argv[2], NULL, 10));
    return 2;
}
