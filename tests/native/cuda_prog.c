/* Test program: a CUDA application that reaches the driver the way the CUDA runtime does since 11.3: it opens
 * libcuda.so.1 with RTLD_LOCAL, looks up cuGetProcAddress with dlsym on that handle, and resolves every entry
 * point through cuGetProcAddress. Run with libflexnpu preloaded; prints key=value lines.
 *
 *   cuda_prog alloc BYTES COUNT THREADS   as acl_prog alloc (cuMemAlloc)
 *   cuda_prog meminfo                     cuMemGetInfo
 *   cuda_prog exitalloc BYTES COUNT       COUNT cuMemAlloc of BYTES, then exit without freeing (as frameworks do)
 *   cuda_prog forkalloc BYTES             cuMemAlloc of BYTES, fork; the child allocates BYTES and exits without
 *                                         freeing; the parent waits for it, prints ready=1, frees on a stdin line
 *   cuda_prog oom BYTES                   cuMemAlloc, cuMemAllocAsync, cuMemAllocPitch of BYTES
 *   cuda_prog launch N US                 N of each: cuLaunchKernel, the _ptsz variant, cuLaunchKernelEx,
 *                                         cuGraphLaunch; then cuCtxSynchronize
 *   cuda_prog direct N US                 N cuLaunchKernel through dlsym(RTLD_DEFAULT) of the linked name
 *   cuda_prog gap N US GAP_MS SYNC        as acl_prog gap (cuLaunchKernel); SYNC: stream (cuStreamSynchronize),
 *                                         event (cuEventRecord + cuEventSynchronize)
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

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef void *CUstream;
typedef struct {
    unsigned int gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes;
    CUstream hStream;
    void *attrs;
    unsigned int numAttrs;
} CUlaunchConfig;

typedef CUresult proc_fn(const char *, void **, int, uint64_t);
typedef CUresult init_fn(unsigned int);
typedef CUresult alloc_fn(CUdeviceptr *, size_t);
typedef CUresult alloc_async_fn(CUdeviceptr *, size_t, CUstream);
typedef CUresult pitch_fn(CUdeviceptr *, size_t *, size_t, size_t, unsigned int);
typedef CUresult free_fn(CUdeviceptr);
typedef CUresult info_fn(size_t *, size_t *);
typedef CUresult launch_fn(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                           void **, void **);
typedef CUresult launch_ex_fn(const CUlaunchConfig *, void *, void **, void **);
typedef CUresult graph_fn(void *, CUstream);
typedef CUresult sync_fn(void);
typedef CUresult stream_create_fn(CUstream *, unsigned int);
typedef CUresult stream_sync_fn(CUstream);
typedef CUresult event_create_fn(void **, unsigned int);
typedef CUresult event_record_fn(void *, CUstream);
typedef CUresult event_sync_fn(void *);

static proc_fn *g_proc;

static void *get(const char *name, uint64_t flags)
{
    void *p = NULL;
    if (g_proc(name, &p, 12040, flags) != 0 || !p) {
        fprintf(stderr, "cuGetProcAddress(%s) failed\n", name);
        exit(3);
    }
    return p;
}

struct job {
    size_t bytes;
    long count, ok, denied, other;
    CUdeviceptr *blocks;
};

static void *alloc_thread(void *arg)
{
    struct job *j = arg;
    alloc_fn *alloc = (alloc_fn *)get("cuMemAlloc", 0);
    j->blocks = calloc((size_t)j->count, sizeof *j->blocks);
    for (long i = 0; i < j->count; i++) {
        CUresult r = alloc(&j->blocks[i], j->bytes);
        if (r == 0)
            j->ok++;
        else if (r == 2)
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
    threads = threads > 64 ? 64 : threads;
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
    free_fn *release = (free_fn *)get("cuMemFree", 0);
    for (int i = 0; i < threads; i++)
        for (long k = 0; k < jobs[i].count; k++)
            if (jobs[i].blocks[k])
                release(jobs[i].blocks[k]);
    printf("freed=1\n");
    return 0;
}

static int run_exitalloc(size_t bytes, long count)
{
    alloc_fn *alloc = (alloc_fn *)get("cuMemAlloc", 0);
    long ok = 0;
    for (long i = 0; i < count; i++) {
        CUdeviceptr p = 0;
        ok += alloc(&p, bytes) == 0;
    }
    printf("ok=%ld\n", ok);
    return 0; /* nothing freed: the driver frees a process's memory when it ends */
}

static int run_forkalloc(size_t bytes)
{
    alloc_fn *alloc = (alloc_fn *)get("cuMemAlloc", 0);
    CUdeviceptr mine = 0, theirs = 0;
    printf("parent_rc=%d\n", alloc(&mine, bytes));
    fflush(stdout);
    pid_t child = fork();
    if (child == 0)
        _exit(alloc(&theirs, bytes) == 0 ? 0 : 1);
    int status = 0;
    waitpid(child, &status, 0);
    printf("child_ok=%d\nready=1\n", WIFEXITED(status) && WEXITSTATUS(status) == 0);
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) {
        /* parent gone: free anyway */
    }
    ((free_fn *)get("cuMemFree", 0))(mine);
    printf("freed=1\n");
    return 0;
}

static int run_meminfo(void)
{
    size_t f = 0, t = 0;
    CUresult r = ((info_fn *)get("cuMemGetInfo", 0))(&f, &t);
    printf("rc=%d\nfree=%zu\ntotal=%zu\n", r, f, t);
    return 0;
}

static int run_oom(size_t bytes)
{
    CUdeviceptr p = 0;
    size_t pitch = 0;
    printf("alloc_rc=%d\n", ((alloc_fn *)get("cuMemAlloc", 0))(&p, bytes));
    printf("async_rc=%d\n", ((alloc_async_fn *)get("cuMemAllocAsync", 0))(&p, bytes, NULL));
    printf("pitch_rc=%d\n", ((pitch_fn *)get("cuMemAllocPitch", 0))(&p, &pitch, bytes, 1, 4));
    return 0;
}

static int run_launch(long n, long us)
{
    stream_create_fn *create = (stream_create_fn *)get("cuStreamCreate", 0);
    launch_fn *launch = (launch_fn *)get("cuLaunchKernel", 0);
    launch_fn *launch_ptsz = (launch_fn *)get("cuLaunchKernel", 2);
    launch_ex_fn *launch_ex = (launch_ex_fn *)get("cuLaunchKernelEx", 0);
    graph_fn *graph = (graph_fn *)get("cuGraphLaunch", 0);
    CUstream s = NULL;
    create(&s, 0);
    uint64_t d = (uint64_t)us;
    void *params[1] = {&d};
    CUlaunchConfig config = {1, 1, 1, 1, 1, 1, 0, s, NULL, 0};
    long ok = 0;
    for (long i = 0; i < n; i++) {
        ok += launch(NULL, 1, 1, 1, 1, 1, 1, 0, s, params, NULL) == 0;
        ok += launch_ptsz(NULL, 1, 1, 1, 1, 1, 1, 0, s, params, NULL) == 0;
        ok += launch_ex(&config, NULL, params, NULL) == 0;
        ok += graph(&d, s) == 0;
    }
    ((sync_fn *)get("cuCtxSynchronize", 0))();
    printf("launched=%ld\n", ok);
    return 0;
}

static int run_direct(long n, long us)
{
    launch_fn *launch = (launch_fn *)dlsym(RTLD_DEFAULT, "cuLaunchKernel");
    if (!launch)
        return 4;
    uint64_t d = (uint64_t)us;
    void *params[1] = {&d};
    long ok = 0;
    for (long i = 0; i < n; i++)
        ok += launch(NULL, 1, 1, 1, 1, 1, 1, 0, NULL, params, NULL) == 0;
    ((sync_fn *)get("cuCtxSynchronize", 0))();
    printf("launched=%ld\n", ok);
    return 0;
}

static int run_gap(long n, long us, long gap_ms, const char *sync)
{
    launch_fn *launch = (launch_fn *)get("cuLaunchKernel", 0);
    stream_sync_fn *stream_sync = (stream_sync_fn *)get("cuStreamSynchronize", 0);
    event_record_fn *record = (event_record_fn *)get("cuEventRecord", 0);
    event_sync_fn *event_sync = (event_sync_fn *)get("cuEventSynchronize", 0);
    CUstream s = NULL;
    void *e = NULL;
    ((stream_create_fn *)get("cuStreamCreate", 0))(&s, 0);
    if (((event_create_fn *)get("cuEventCreate", 0))(&e, 0) != 0)
        return 3;
    uint64_t d = (uint64_t)us;
    void *params[1] = {&d};
    long ok = 0, synced = 0;
    for (int phase = 0; phase < 2; phase++) {
        if (phase) {
            struct timespec gap = {gap_ms / 1000, gap_ms % 1000 * 1000000L};
            while (nanosleep(&gap, &gap) != 0 && errno == EINTR) {
            }
        }
        for (long i = 0; i < n; i++)
            ok += launch(NULL, 1, 1, 1, 1, 1, 1, 0, s, params, NULL) == 0;
        if (!strcmp(sync, "stream"))
            synced += stream_sync(s) == 0;
        else if (!strcmp(sync, "event"))
            synced += record(e, s) == 0 && event_sync(e) == 0;
    }
    printf("launched=%ld\nsynced=%ld\n", ok, synced);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h || argc < 2)
        return 2;
    g_proc = (proc_fn *)dlsym(h, "cuGetProcAddress");
    if (!g_proc || ((init_fn *)get("cuInit", 0))(0) != 0)
        return 2;
    const char *mode = argv[1];
    if (!strcmp(mode, "alloc") && argc == 5)
        return run_alloc(strtoull(argv[2], NULL, 10), atol(argv[3]), atoi(argv[4]));
    if (!strcmp(mode, "meminfo"))
        return run_meminfo();
    if (!strcmp(mode, "exitalloc") && argc == 4)
        return run_exitalloc(strtoull(argv[2], NULL, 10), atol(argv[3]));
    if (!strcmp(mode, "forkalloc") && argc == 3)
        return run_forkalloc(strtoull(argv[2], NULL, 10));
    if (!strcmp(mode, "oom") && argc == 3)
        return run_oom(strtoull(argv[2], NULL, 10));
    if (!strcmp(mode, "launch") && argc == 4)
        return run_launch(atol(argv[2]), atol(argv[3]));
    if (!strcmp(mode, "gap") && argc == 6)
        return run_gap(atol(argv[2]), atol(argv[3]), atol(argv[4]), argv[5]);
    if (!strcmp(mode, "direct") && argc == 4)
        return run_direct(atol(argv[2]), atol(argv[3]));
    return 2;
}
