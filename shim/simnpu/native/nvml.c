/* A fake libnvidia-ml.so.1 over the simulated device (fakedev.h): the part of NVML that flexnpud's memory watch
 * reads (flexnpu/shim/daemon/nvml.py), with NVML's real names, signatures, struct layout and return codes, from
 * NVIDIA's nvml.h (CUDA 12: `nvmlProcessInfo_t` is `nvmlProcessInfo_v2_t`, and the unversioned names are
 * `#define`d to the versioned ones below).
 *
 * One device (index 0): the card in FLEXNPU_FAKEDEV. Its compute processes are the live processes holding memory
 * on it, with the device's own ground truth of their memory: what a program allocated through the fake libcuda,
 * interposed or not. FLEXNPU_FAKE_NVML_HIDE_MEMORY=1 reports usedGpuMemory as NVML_VALUE_NOT_AVAILABLE, as NVML
 * does where the caller may not see other processes' memory.
 */
#define _GNU_SOURCE
#include "fakedev.h"

#include <stdatomic.h>
#include <stdlib.h>

typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_VALUE_NOT_AVAILABLE (~0ull)
#define MAX_USERS 64

typedef struct nvmlDevice_st {
    int index;
} *nvmlDevice_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

_Static_assert(sizeof(nvmlProcessInfo_t) == 24, "nvmlProcessInfo_v2_t layout");

static _Atomic int g_inits;
static struct nvmlDevice_st g_device = {0};

FD_EXPORT nvmlReturn_t nvmlInit_v2(void)
{
    atomic_fetch_add(&g_inits, 1);
    return NVML_SUCCESS;
}

FD_EXPORT nvmlReturn_t nvmlShutdown(void)
{
    int n = atomic_load(&g_inits);
    while (n > 0 && !atomic_compare_exchange_weak(&g_inits, &n, n - 1)) {
    }
    return n > 0 ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
}

FD_EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS:
        return "Success";
    case NVML_ERROR_UNINITIALIZED:
        return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT:
        return "Invalid Argument";
    case NVML_ERROR_INSUFFICIENT_SIZE:
        return "Insufficient Size";
    default:
        return "Unknown Error";
    }
}

FD_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    if (atomic_load(&g_inits) == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (!deviceCount)
        return NVML_ERROR_INVALID_ARGUMENT;
    *deviceCount = 1;
    return NVML_SUCCESS;
}

FD_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    if (atomic_load(&g_inits) == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (index != 0 || !device)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &g_device;
    return NVML_SUCCESS;
}

/* NVML's contract: on entry *infoCount is the room in infos; NVML_ERROR_INSUFFICIENT_SIZE with *infoCount set to
 * the number needed when it is too small (infos may then be NULL); on success *infoCount is the number written. */
FD_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                               nvmlProcessInfo_t *infos)
{
    if (atomic_load(&g_inits) == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (device != &g_device || !infoCount)
        return NVML_ERROR_INVALID_ARGUMENT;
    int32_t pids[MAX_USERS];
    uint64_t bytes[MAX_USERS];
    unsigned n = fd_memory_users(MAX_USERS, pids, bytes);
    if (n > MAX_USERS)
        n = MAX_USERS;
    if (*infoCount < n) {
        *infoCount = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (n > 0 && !infos)
        return NVML_ERROR_INVALID_ARGUMENT;
    const char *hide = getenv("FLEXNPU_FAKE_NVML_HIDE_MEMORY");
    int hidden = hide && hide[0] == '1';
    for (unsigned i = 0; i < n; i++) {
        infos[i].pid = (unsigned int)pids[i];
        infos[i].usedGpuMemory = hidden ? NVML_VALUE_NOT_AVAILABLE : bytes[i];
        infos[i].gpuInstanceId = ~0u; /* no MIG: NVML reports 0xFFFFFFFF */
        infos[i].computeInstanceId = ~0u;
    }
    *infoCount = n;
    return NVML_SUCCESS;
}

/* The same struct since R470 (v2); v3 changed only what the driver counts, not the layout. */
FD_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                               nvmlProcessInfo_t *infos)
{
    return nvmlDeviceGetComputeRunningProcesses_v3(device, infoCount, infos);
}
