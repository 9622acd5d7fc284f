/* Benchmark workload (bench/native_share.py): an AscendCL application whose kernels have random lengths that only
 * the fake device knows (the duration rides in the kernel's argument), launched through a random mix of entry
 * points (aclrtLaunchKernel, aclmdlExecuteAsync, aclopExecuteV2, rtKernelLaunch), with host gaps.
 *
 *   workload_prog batch SECONDS SEED MIN_US MAX_US BURST GAP_US
 *       until SECONDS have passed: 1..BURST kernels of MIN_US..MAX_US, synchronise the stream, then a host gap of
 *       0..GAP_US (sleep). Prints launched=N.
 *   workload_prog steps STEPS SEED KERNELS MIN_US MAX_US GAP_US
 *       STEPS steps of KERNELS kernels of MIN_US..MAX_US each; a step is timed on the host's wall clock from its
 *       first launch to the return of its synchronise; GAP_US of host time between steps. Prints
 *       launched=N and step_ns=T1,T2,... (one per step).
 *
 * With WORKLOAD_START_FILE set, the program waits (after aclInit and aclrtSetDevice, up to 10 minutes) until that
 * file exists before its first kernel, so tenants started at different times run their work side by side.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int aclError;
typedef void *aclrtStream;

aclError aclInit(const char *configPath);
aclError aclrtSetDevice(int32_t deviceId);
aclError aclrtCreateStream(aclrtStream *stream);
aclError aclrtLaunchKernel(void *funcHandle, uint32_t blockDim, const void *argsData, size_t argsSize,
                           aclrtStream stream);
aclError aclmdlExecuteAsync(uint32_t modelId, const void *input, void *output, aclrtStream stream);
aclError aclopExecuteV2(const char *opType, int numInputs, void *inputDesc[], void *inputs[], int numOutputs,
                        void *outputDesc[], void *outputs[], void *attr, aclrtStream stream);
aclError aclrtSynchronizeStream(aclrtStream stream);
int rtKernelLaunch(const void *stubFunc, uint32_t blockDim, void *args, uint32_t argsSize, void *smDesc, void *stm);

static uint64_t g_rng;

static uint64_t next_random(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

static uint64_t uniform(uint64_t lo, uint64_t hi) { return hi <= lo ? lo : lo + next_random() % (hi - lo + 1); }

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_us(uint64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* One kernel of `us` microseconds through one of four entry points; 1 when the launch was accepted. */
static int launch(uint64_t us, aclrtStream s)
{
    uint64_t d = us;
    switch (next_random() % 4) {
    case 0:
        return aclrtLaunchKernel(NULL, 1, &d, sizeof d, s) == 0;
    case 1:
        return aclmdlExecuteAsync((uint32_t)us, NULL, NULL, s) == 0;
    case 2:
        return aclopExecuteV2("Add", 0, NULL, NULL, 0, NULL, NULL, &d, s) == 0;
    default:
        return rtKernelLaunch(NULL, 1, &d, sizeof d, NULL, s) == 0;
    }
}

static int run_batch(double seconds, uint64_t min_us, uint64_t max_us, uint64_t burst, uint64_t gap_us)
{
    aclrtStream s = NULL;
    if (aclrtCreateStream(&s) != 0)
        return 3;
    uint64_t end = now_ns() + (uint64_t)(seconds * 1e9);
    long launched = 0;
    while (now_ns() < end) {
        uint64_t n = uniform(1, burst);
        for (uint64_t i = 0; i < n; i++)
            launched += launch(uniform(min_us, max_us), s);
        aclrtSynchronizeStream(s);
        if (gap_us)
            sleep_us(uniform(0, gap_us));
    }
    printf("launched=%ld\n", launched);
    return 0;
}

static int run_steps(long steps, long kernels, uint64_t min_us, uint64_t max_us, uint64_t gap_us)
{
    aclrtStream s = NULL;
    if (steps <= 0 || steps > 100000 || aclrtCreateStream(&s) != 0)
        return 3;
    uint64_t *took = calloc((size_t)steps, sizeof *took);
    if (!took)
        return 3;
    long launched = 0;
    for (long i = 0; i < steps; i++) {
        uint64_t t0 = now_ns();
        for (long k = 0; k < kernels; k++)
            launched += launch(uniform(min_us, max_us), s);
        aclrtSynchronizeStream(s);
        took[i] = now_ns() - t0;
        if (gap_us)
            sleep_us(gap_us);
    }
    printf("launched=%ld\nstep_ns=", launched);
    for (long i = 0; i < steps; i++)
        printf(i ? ",%llu" : "%llu", (unsigned long long)took[i]);
    printf("\n");
    free(took);
    return 0;
}

/* 0 once the start file exists (or none is named); 4 when it did not appear in time. */
static int wait_for_start(void)
{
    const char *path = getenv("WORKLOAD_START_FILE");
    if (!path || !*path)
        return 0;
    for (int i = 0; i < 60000; i++) {
        FILE *f = fopen(path, "r");
        if (f) {
            fclose(f);
            return 0;
        }
        sleep_us(10000);
    }
    return 4;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    if (argc != 8 || aclInit(NULL) != 0 || aclrtSetDevice(0) != 0)
        return 2;
    g_rng = strtoull(argv[3], NULL, 10) * 0x9E3779B97F4A7C15ull + 1;
    uint64_t a = strtoull(argv[4], NULL, 10), lo = strtoull(argv[5], NULL, 10), hi = strtoull(argv[6], NULL, 10);
    uint64_t gap = strtoull(argv[7], NULL, 10);
    if (wait_for_start() != 0)
        return 4;
    if (!strcmp(argv[1], "batch"))
        return run_batch(strtod(argv[2], NULL), a, lo, hi, gap);
    if (!strcmp(argv[1], "steps"))
        return run_steps(atol(argv[2]), (long)a, lo, hi, gap);
    return 2;
}
