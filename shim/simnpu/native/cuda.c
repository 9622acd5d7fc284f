/* Fake libcuda.so.1: the CUDA driver API on the simulated device (fakedev.h). Names, signatures and error codes
 * as cuda.h declares them (the _v2 names cuda.h #defines, the _ptsz per-thread-default-stream variants,
 * cuGetProcAddress and cuGetProcAddress_v2). Durations (only this fake reads them): cuLaunchKernel(Ex)
 * kernelParams[0] -> uint64 us; cuGraphLaunch's CUgraphExec points to a uint64 of us.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fakedev.h"

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef void *CUstream;
typedef void *CUevent;
typedef uint64_t cuuint64_t;

typedef struct {
    unsigned int gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes;
    CUstream hStream;
    void *attrs;
    unsigned int numAttrs;
} CUlaunchConfig;

#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_OUT_OF_MEMORY 2
#define CUDA_ERROR_NOT_FOUND 500
#define CUDA_ERROR_NOT_READY 600
#define CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM 2ull

static uint64_t param_ns(void **params)
{
    uint64_t us = 0;
    if (params && params[0])
        memcpy(&us, params[0], sizeof us);
    return us * 1000u;
}

static CUresult launch(CUstream stream, uint64_t ns)
{
    fd_launch(fd_stream_of(stream), ns);
    return CUDA_SUCCESS;
}

static CUresult allocate(CUdeviceptr *dptr, size_t bytes)
{
    uint64_t address = 0;
    if (!dptr)
        return CUDA_ERROR_INVALID_VALUE;
    if (fd_alloc(bytes, &address) != 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *dptr = address;
    return CUDA_SUCCESS;
}

static CUresult release(CUdeviceptr dptr) { return fd_free(dptr) == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE; }

FD_EXPORT CUresult cuInit(unsigned int flags) { return flags ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS; }
FD_EXPORT CUresult cuDriverGetVersion(int *version)
{
    *version = 12040;
    return CUDA_SUCCESS;
}

FD_EXPORT CUresult cuStreamCreate(CUstream *stream, unsigned int flags)
{
    (void)flags;
    *stream = fd_stream_new();
    return *stream ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
FD_EXPORT CUresult cuStreamDestroy_v2(CUstream stream)
{
    fd_stream_free(stream);
    return CUDA_SUCCESS;
}
FD_EXPORT CUresult cuStreamIsCapturing(CUstream stream, int *status)
{
    (void)stream;
    *status = 0;
    return CUDA_SUCCESS;
}

FD_EXPORT CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                  unsigned bz, unsigned shared, CUstream stream, void **params, void **extra)
{
    (void)f, (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)shared, (void)extra;
    return launch(stream, param_ns(params));
}
FD_EXPORT CUresult cuLaunchKernel_ptsz(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                       unsigned bz, unsigned shared, CUstream stream, void **params, void **extra)
{
    (void)f, (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)shared, (void)extra;
    return launch(stream, param_ns(params));
}
FD_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, void *f, void **params, void **extra)
{
    (void)f, (void)extra;
    return config ? launch(config->hStream, param_ns(params)) : CUDA_ERROR_INVALID_VALUE;
}
FD_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, void *f, void **params, void **extra)
{
    (void)f, (void)extra;
    return config ? launch(config->hStream, param_ns(params)) : CUDA_ERROR_INVALID_VALUE;
}
FD_EXPORT CUresult cuGraphLaunch(void *graph, CUstream stream)
{
    void *params[1] = {graph};
    return graph ? launch(stream, param_ns(params)) : CUDA_ERROR_INVALID_VALUE;
}
FD_EXPORT CUresult cuGraphLaunch_ptsz(void *graph, CUstream stream)
{
    void *params[1] = {graph};
    return graph ? launch(stream, param_ns(params)) : CUDA_ERROR_INVALID_VALUE;
}

FD_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytes) { return allocate(dptr, bytes); }
FD_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytes, unsigned int flags)
{
    (void)flags;
    return allocate(dptr, bytes);
}
FD_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                                      unsigned int elementSize)
{
    (void)elementSize;
    if (!pitch)
        return CUDA_ERROR_INVALID_VALUE;
    size_t p = (width + 255) / 256 * 256;
    CUresult r = allocate(dptr, p * height);
    if (r == CUDA_SUCCESS)
        *pitch = p;
    return r;
}
FD_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytes, CUstream stream)
{
    (void)stream;
    return allocate(dptr, bytes);
}
FD_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytes, CUstream stream)
{
    (void)stream;
    return allocate(dptr, bytes);
}
FD_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) { return release(dptr); }
FD_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream)
{
    (void)stream;
    return release(dptr);
}
FD_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream)
{
    (void)stream;
    return release(dptr);
}
FD_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total)
{
    uint64_t f, t;
    if (!free_bytes || !total)
        return CUDA_ERROR_INVALID_VALUE;
    fd_mem_info(&f, &t);
    *free_bytes = (size_t)f;
    *total = (size_t)t;
    return CUDA_SUCCESS;
}

FD_EXPORT CUresult cuEventCreate(CUevent *event, unsigned int flags)
{
    (void)flags;
    *event = calloc(1, sizeof(struct fd_event));
    return *event ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
FD_EXPORT CUresult cuEventDestroy_v2(CUevent event)
{
    free(event);
    return CUDA_SUCCESS;
}
FD_EXPORT CUresult cuEventRecord(CUevent event, CUstream stream)
{
    if (!event)
        return CUDA_ERROR_INVALID_VALUE;
    fd_event_record(event, fd_stream_of(stream));
    return CUDA_SUCCESS;
}
FD_EXPORT CUresult cuEventQuery(CUevent event) { return fd_event_done(event) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY; }
FD_EXPORT CUresult cuEventSynchronize(CUevent event)
{
    fd_event_wait(event);
    return CUDA_SUCCESS;
}
FD_EXPORT CUresult cuEventElapsedTime(float *ms, CUevent start, CUevent end)
{
    const struct fd_event *s = start, *e = end;
    if (!ms || !s || !e || !s->recorded || !e->recorded || e->at_ns < s->at_ns)
        return CUDA_ERROR_INVALID_VALUE;
    *ms = (float)((double)(e->at_ns - s->at_ns) / 1e6);
    return CUDA_SUCCESS;
}
static CUresult stream_sync(CUstream stream)
{
    fd_stream_wait(fd_stream_of(stream));
    return CUDA_SUCCESS;
}
FD_EXPORT CUresult cuStreamSynchronize(CUstream stream) { return stream_sync(stream); }
FD_EXPORT CUresult cuStreamSynchronize_ptsz(CUstream stream) { return stream_sync(stream); }
FD_EXPORT CUresult cuCtxSynchronize(void)
{
    fd_device_wait();
    return CUDA_SUCCESS;
}

FD_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags);

/* What the driver hands out for a base name: the newest versioned ABI, the _ptsz variant when asked. */
struct proc {
    const char *base;
    void *plain, *ptsz;
};
static const struct proc g_procs[] = {
    {"cuInit", (void *)cuInit, NULL},
    {"cuDriverGetVersion", (void *)cuDriverGetVersion, NULL},
    {"cuStreamCreate", (void *)cuStreamCreate, NULL},
    {"cuStreamDestroy", (void *)cuStreamDestroy_v2, NULL},
    {"cuLaunchKernel", (void *)cuLaunchKernel, (void *)cuLaunchKernel_ptsz},
    {"cuLaunchKernelEx", (void *)cuLaunchKernelEx, (void *)cuLaunchKernelEx_ptsz},
    {"cuGraphLaunch", (void *)cuGraphLaunch, (void *)cuGraphLaunch_ptsz},
    {"cuMemAlloc", (void *)cuMemAlloc_v2, NULL},
    {"cuMemAllocManaged", (void *)cuMemAllocManaged, NULL},
    {"cuMemAllocPitch", (void *)cuMemAllocPitch_v2, NULL},
    {"cuMemAllocAsync", (void *)cuMemAllocAsync, (void *)cuMemAllocAsync_ptsz},
    {"cuMemFree", (void *)cuMemFree_v2, NULL},
    {"cuMemFreeAsync", (void *)cuMemFreeAsync, (void *)cuMemFreeAsync_ptsz},
    {"cuMemGetInfo", (void *)cuMemGetInfo_v2, NULL},
    {"cuEventCreate", (void *)cuEventCreate, NULL},
    {"cuEventDestroy", (void *)cuEventDestroy_v2, NULL},
    {"cuEventRecord", (void *)cuEventRecord, NULL},
    {"cuEventQuery", (void *)cuEventQuery, NULL},
    {"cuEventSynchronize", (void *)cuEventSynchronize, NULL},
    {"cuEventElapsedTime", (void *)cuEventElapsedTime, NULL},
    {"cuStreamSynchronize", (void *)cuStreamSynchronize, (void *)cuStreamSynchronize_ptsz},
    {"cuCtxSynchronize", (void *)cuCtxSynchronize, NULL},
    {"cuGetProcAddress", (void *)cuGetProcAddress, NULL},
};

static CUresult lookup(const char *symbol, void **pfn, cuuint64_t flags)
{
    if (!symbol || !pfn)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < sizeof g_procs / sizeof *g_procs; i++) {
        if (strcmp(g_procs[i].base, symbol) == 0) {
            int ptds = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) && g_procs[i].ptsz;
            *pfn = ptds ? g_procs[i].ptsz : g_procs[i].plain;
            return CUDA_SUCCESS;
        }
    }
    *pfn = NULL;
    return CUDA_ERROR_NOT_FOUND;
}

FD_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    (void)cudaVersion;
    return lookup(symbol, pfn, flags);
}

FD_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                       int *symbolStatus)
{
    (void)cudaVersion;
    CUresult r = lookup(symbol, pfn, flags);
    if (symbolStatus)
        *symbolStatus = r == CUDA_SUCCESS ? 0 : 1;
    return r;
}
