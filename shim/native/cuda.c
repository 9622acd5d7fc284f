/* libflexnpu, CUDA: thin wrappers over the CUDA driver API (libcuda.so.1). The names are the versioned symbols
 * that cuda.h #defines (cuMemAlloc -> cuMemAlloc_v2, ...); the runtime API (libcudart) reaches the driver
 * through cuGetProcAddress since CUDA 11.3, so cuGetProcAddress (and _v2) hand out these wrappers for the names
 * intercepted here, as HAMi-core does. _ptsz entry points are the per-thread-default-stream variants
 * (CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM). The table with sources is SYMBOLS.md.
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "gate.h"
#include "real.h"

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef uint64_t cuuint64_t;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUfunc_st *CUfunction;
typedef struct CUgraphExec_st *CUgraphExec;
typedef struct CUmemPoolHandle_st *CUmemoryPool;
typedef struct CUmemAllocationProp_st CUmemAllocationProp;
typedef struct CUlaunchAttribute_st CUlaunchAttribute;
typedef int CUdriverProcAddressQueryResult;
typedef int CUstreamCaptureStatus;

typedef struct CUlaunchConfig_st {
    unsigned int gridDimX, gridDimY, gridDimZ;
    unsigned int blockDimX, blockDimY, blockDimZ;
    unsigned int sharedMemBytes;
    CUstream hStream;
    CUlaunchAttribute *attrs;
    unsigned int numAttrs;
} CUlaunchConfig;

#define CUDA_SUCCESS 0
#define CUDA_ERROR_OUT_OF_MEMORY 2
#define CUDA_ERROR_NOT_FOUND 500
#define CUDA_ERROR_NOT_READY 600
#define FX_PITCH_ALIGN 512u /* upper bound of the pitch alignment cuMemAllocPitch may pick */

#define CUDA_SYMBOLS(X)                                                                                          \
    X(cuLaunchKernel) X(cuLaunchKernel_ptsz) X(cuLaunchKernelEx) X(cuLaunchKernelEx_ptsz) X(cuGraphLaunch)        \
    X(cuGraphLaunch_ptsz) X(cuMemAlloc_v2) X(cuMemAllocManaged) X(cuMemAllocPitch_v2) X(cuMemAllocAsync)          \
    X(cuMemAllocAsync_ptsz) X(cuMemAllocFromPoolAsync) X(cuMemAllocFromPoolAsync_ptsz) X(cuMemCreate)             \
    X(cuMemFree_v2) X(cuMemFreeAsync) X(cuMemFreeAsync_ptsz) X(cuMemRelease) X(cuMemGetInfo_v2)                   \
    X(cuStreamSynchronize) X(cuStreamSynchronize_ptsz) X(cuCtxSynchronize) X(cuEventSynchronize)                  \
    X(cuGetProcAddress) X(cuGetProcAddress_v2)

#define FX_ENUM(name) I_##name,
#define FX_NAME(name) #name,
#define FX_WRAPPER(name) (void *)name,
#define FX_DECLARE(name) extern __typeof__(name##_t) name;
enum { CUDA_SYMBOLS(FX_ENUM) CUDA_COUNT };

typedef CUresult cuLaunchKernel_t(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                  CUstream, void **, void **);
typedef cuLaunchKernel_t cuLaunchKernel_ptsz_t;
typedef CUresult cuLaunchKernelEx_t(const CUlaunchConfig *, CUfunction, void **, void **);
typedef cuLaunchKernelEx_t cuLaunchKernelEx_ptsz_t;
typedef CUresult cuGraphLaunch_t(CUgraphExec, CUstream);
typedef cuGraphLaunch_t cuGraphLaunch_ptsz_t;
typedef CUresult cuMemAlloc_v2_t(CUdeviceptr *, size_t);
typedef CUresult cuMemAllocManaged_t(CUdeviceptr *, size_t, unsigned int);
typedef CUresult cuMemAllocPitch_v2_t(CUdeviceptr *, size_t *, size_t, size_t, unsigned int);
typedef CUresult cuMemAllocAsync_t(CUdeviceptr *, size_t, CUstream);
typedef cuMemAllocAsync_t cuMemAllocAsync_ptsz_t;
typedef CUresult cuMemAllocFromPoolAsync_t(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
typedef cuMemAllocFromPoolAsync_t cuMemAllocFromPoolAsync_ptsz_t;
typedef CUresult cuMemCreate_t(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *,
                               unsigned long long);
typedef CUresult cuMemFree_v2_t(CUdeviceptr);
typedef CUresult cuMemFreeAsync_t(CUdeviceptr, CUstream);
typedef cuMemFreeAsync_t cuMemFreeAsync_ptsz_t;
typedef CUresult cuMemRelease_t(CUmemGenericAllocationHandle);
typedef CUresult cuMemGetInfo_v2_t(size_t *, size_t *);
typedef CUresult cuStreamSynchronize_t(CUstream);
typedef cuStreamSynchronize_t cuStreamSynchronize_ptsz_t;
typedef CUresult cuCtxSynchronize_t(void);
typedef CUresult cuEventSynchronize_t(CUevent);
typedef CUresult cuGetProcAddress_t(const char *, void **, int, cuuint64_t);
typedef CUresult cuGetProcAddress_v2_t(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
CUDA_SYMBOLS(FX_DECLARE)

static const char *const g_names[] = {CUDA_SYMBOLS(FX_NAME)};
static void *const g_wrappers[] = {CUDA_SYMBOLS(FX_WRAPPER)};
static void *_Atomic g_real[CUDA_COUNT];
static const char *const g_libraries[] = {"libcuda.so.1", "libcuda.so", NULL};
static struct fx_symbols g_table = {CUDA_COUNT, g_names, g_wrappers, g_real, g_libraries};

struct fx_symbols *fx_cuda_symbols(void) { return &g_table; }

#define REAL(name) ((name##_t *)fx_real_fast(&g_table, I_##name))

/* ---- the wrapper shapes (wrap.h) ----------------------------------------------------------------------------- */

typedef CUresult fx_result;
#define FX_OK CUDA_SUCCESS
#define FX_NO_MEMORY CUDA_ERROR_OUT_OF_MEMORY
#define MISSING CUDA_ERROR_NOT_FOUND
#include "wrap.h"

/* ---- device events for the core ----------------------------------------------------------------------------- */

typedef CUresult event_create_t(CUevent *, unsigned int);
typedef CUresult event_one_t(CUevent);
typedef CUresult event_record_t(CUevent, CUstream);
typedef CUresult elapsed_t(float *, CUevent, CUevent);
typedef CUresult capturing_t(CUstream, CUstreamCaptureStatus *);

static int ev_create(void **event)
{
    HELPER(event_create_t, "cuEventCreate");
    return f ? f((CUevent *)event, 0) : -1;
}
static void ev_destroy(void *event)
{
    HELPER(event_one_t, "cuEventDestroy_v2");
    if (f)
        f(event);
}
static int ev_record(void *event, void *stream)
{
    HELPER(event_record_t, "cuEventRecord");
    return f ? f(event, stream) : -1;
}
static int ev_done(void *event)
{
    HELPER(event_one_t, "cuEventQuery");
    if (!f)
        return -1;
    CUresult r = f(event);
    return r == CUDA_SUCCESS ? 1 : r == CUDA_ERROR_NOT_READY ? 0 : -1;
}
static int ev_sync(void *event)
{
    cuEventSynchronize_t *f = REAL(cuEventSynchronize);
    return f ? f(event) : -1;
}
static int ev_elapsed(void *start, void *end, uint64_t *ns)
{
    HELPER(elapsed_t, "cuEventElapsedTime");
    float ms = 0;
    if (!f || f(&ms, start, end) != CUDA_SUCCESS)
        return -1;
    return fx_ms_to_ns(ms, ns);
}
static int dev_sync(void)
{
    cuCtxSynchronize_t *f = REAL(cuCtxSynchronize);
    return f ? f() : -1;
}
static int capturing(void *stream)
{
    HELPER(capturing_t, "cuStreamIsCapturing");
    CUstreamCaptureStatus status = 0;
    if (!f || f(stream, &status) != CUDA_SUCCESS)
        return 0;
    return status != 0;
}

static const struct fx_ops g_ops = {FX_ABI_CUDA, ev_create, ev_destroy, ev_record, ev_done,
                                    ev_sync, ev_elapsed, dev_sync, capturing};

/* ---- launches ------------------------------------------------------------------------------------------------ */

FX_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                  unsigned bz, unsigned shared, CUstream stream, void **params, void **extra)
{
    GATED(cuLaunchKernel, stream, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra);
}

FX_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                       unsigned by, unsigned bz, unsigned shared, CUstream stream, void **params,
                                       void **extra)
{
    GATED(cuLaunchKernel_ptsz, stream, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra);
}

FX_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params, void **extra)
{
    GATED(cuLaunchKernelEx, config ? config->hStream : NULL, config, f, params, extra);
}

FX_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **params, void **extra)
{
    GATED(cuLaunchKernelEx_ptsz, config ? config->hStream : NULL, config, f, params, extra);
}

FX_EXPORT CUresult cuGraphLaunch(CUgraphExec graph, CUstream stream) { GATED(cuGraphLaunch, stream, graph, stream); }

FX_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec graph, CUstream stream)
{
    GATED(cuGraphLaunch_ptsz, stream, graph, stream);
}

/* ---- memory -------------------------------------------------------------------------------------------------- */

FX_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    ALLOCATE(cuMemAlloc_v2, dptr, bytesize, dptr, bytesize);
}

FX_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
{
    ALLOCATE(cuMemAllocManaged, dptr, bytesize, dptr, bytesize, flags);
}

/* The pitch is chosen by the driver: reserve the widest row it may pick, then give back the difference. */
FX_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                                      unsigned int elementSize)
{
    cuMemAllocPitch_v2_t *real = REAL(cuMemAllocPitch_v2);
    if (!real)
        return MISSING;
    if (fx_nested())
        return real(dptr, pitch, width, height, elementSize);
    uint64_t row = ((uint64_t)width + FX_PITCH_ALIGN - 1) / FX_PITCH_ALIGN * FX_PITCH_ALIGN;
    uint64_t bytes = height && row > UINT64_MAX / height ? UINT64_MAX : row * height;
    if (bytes == UINT64_MAX || fx_mem_reserve(bytes) != 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    fx_nest_in();
    CUresult r = real(dptr, pitch, width, height, elementSize);
    fx_nest_out();
    if (r != CUDA_SUCCESS || !dptr || !*dptr || !pitch) {
        fx_mem_unreserve(bytes);
        return r;
    }
    uint64_t used = (uint64_t)*pitch * height;
    if (used < bytes) {
        fx_mem_unreserve(bytes - used);
        bytes = used;
    }
    fx_mem_commit((uint64_t)*dptr, bytes);
    return r;
}

FX_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream stream)
{
    ALLOCATE(cuMemAllocAsync, dptr, bytesize, dptr, bytesize, stream);
}

FX_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream stream)
{
    ALLOCATE(cuMemAllocAsync_ptsz, dptr, bytesize, dptr, bytesize, stream);
}

FX_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream stream)
{
    ALLOCATE(cuMemAllocFromPoolAsync, dptr, bytesize, dptr, bytesize, pool, stream);
}

FX_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                                CUstream stream)
{
    ALLOCATE(cuMemAllocFromPoolAsync_ptsz, dptr, bytesize, dptr, bytesize, pool, stream);
}

FX_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                               unsigned long long flags)
{
    ALLOCATE(cuMemCreate, handle, size, handle, size, prop, flags);
}

FX_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) { RELEASE(cuMemFree_v2, dptr, dptr); }
FX_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream) { RELEASE(cuMemFreeAsync, dptr, dptr, stream); }
FX_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream)
{
    RELEASE(cuMemFreeAsync_ptsz, dptr, dptr, stream);
}
FX_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) { RELEASE(cuMemRelease, handle, handle); }

FX_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total)
{
    cuMemGetInfo_v2_t *real = REAL(cuMemGetInfo_v2);
    if (!real)
        return MISSING;
    return fx_mem_viewed(real(free_bytes, total), free_bytes, total);
}

/* ---- synchronisation ----------------------------------------------------------------------------------------- */

FX_EXPORT CUresult cuStreamSynchronize(CUstream stream) { SYNCED(cuStreamSynchronize, 0, stream); }
FX_EXPORT CUresult cuStreamSynchronize_ptsz(CUstream stream) { SYNCED(cuStreamSynchronize_ptsz, 0, stream); }
FX_EXPORT CUresult cuCtxSynchronize(void) { SYNCED(cuCtxSynchronize, 1); }
FX_EXPORT CUresult cuEventSynchronize(CUevent event) { SYNCED(cuEventSynchronize, 0, event); }

/* ---- cuGetProcAddress -------------------------------------------------------------------------------------- */

/* Base names the runtime asks for, the CUDA version that introduced the ABI we wrap, and our wrappers of the
 * variants the driver may hand out for it (plain, per-thread default stream, newer signature). */
struct fx_proc {
    const char *base;
    int since;
    int variant[3]; /* indexes into the table; -1: none */
};

static const struct fx_proc g_procs[] = {
    {"cuLaunchKernel", 4000, {I_cuLaunchKernel, I_cuLaunchKernel_ptsz, -1}},
    {"cuLaunchKernelEx", 11060, {I_cuLaunchKernelEx, I_cuLaunchKernelEx_ptsz, -1}},
    {"cuGraphLaunch", 10000, {I_cuGraphLaunch, I_cuGraphLaunch_ptsz, -1}},
    {"cuMemAlloc", 3020, {I_cuMemAlloc_v2, -1, -1}},
    {"cuMemAllocManaged", 6000, {I_cuMemAllocManaged, -1, -1}},
    {"cuMemAllocPitch", 3020, {I_cuMemAllocPitch_v2, -1, -1}},
    {"cuMemAllocAsync", 11020, {I_cuMemAllocAsync, I_cuMemAllocAsync_ptsz, -1}},
    {"cuMemAllocFromPoolAsync", 11020, {I_cuMemAllocFromPoolAsync, I_cuMemAllocFromPoolAsync_ptsz, -1}},
    {"cuMemCreate", 10020, {I_cuMemCreate, -1, -1}},
    {"cuMemFree", 3020, {I_cuMemFree_v2, -1, -1}},
    {"cuMemFreeAsync", 11020, {I_cuMemFreeAsync, I_cuMemFreeAsync_ptsz, -1}},
    {"cuMemRelease", 10020, {I_cuMemRelease, -1, -1}},
    {"cuMemGetInfo", 3020, {I_cuMemGetInfo_v2, -1, -1}},
    {"cuStreamSynchronize", 2000, {I_cuStreamSynchronize, I_cuStreamSynchronize_ptsz, -1}},
    {"cuCtxSynchronize", 2000, {I_cuCtxSynchronize, -1, -1}},
    {"cuEventSynchronize", 2000, {I_cuEventSynchronize, -1, -1}},
    {"cuGetProcAddress", 11030, {I_cuGetProcAddress, I_cuGetProcAddress_v2, -1}},
};

static int g_log_unknown;

/* Replace the real function the driver handed out by our wrapper of that same function, never another one. */
static void substitute(const char *symbol, void **pfn, int version)
{
    if (!symbol || !pfn || !*pfn)
        return;
    for (size_t i = 0; i < sizeof g_procs / sizeof *g_procs; i++) {
        const struct fx_proc *p = &g_procs[i];
        if (strcmp(p->base, symbol) != 0 || version < p->since)
            continue;
        for (int v = 0; v < 3 && p->variant[v] >= 0; v++) {
            if (g_wrappers[p->variant[v]] == *pfn)
                return; /* already ours (a driver whose table binds to the interposed export) */
            if (fx_real(&g_table, (size_t)p->variant[v]) == *pfn) {
                *pfn = g_wrappers[p->variant[v]];
                return;
            }
        }
        fx_log_once(&g_log_unknown, "cuGetProcAddress returned a version of an intercepted entry point that "
                                    "libflexnpu does not wrap: left ungated");
        return;
    }
}

FX_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    cuGetProcAddress_t *real = REAL(cuGetProcAddress);
    if (!real)
        return MISSING;
    CUresult r = real(symbol, pfn, cudaVersion, flags);
    if (r == CUDA_SUCCESS)
        substitute(symbol, pfn, cudaVersion);
    return r;
}

FX_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                       CUdriverProcAddressQueryResult *status)
{
    cuGetProcAddress_v2_t *real = REAL(cuGetProcAddress_v2);
    if (!real)
        return MISSING;
    CUresult r = real(symbol, pfn, cudaVersion, flags, status);
    if (r == CUDA_SUCCESS)
        substitute(symbol, pfn, cudaVersion);
    return r;
}
