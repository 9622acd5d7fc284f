/* libflexnpu, Ascend: thin wrappers over AscendCL (libascendcl.so) and the runtime layer beneath it
 * (libruntime.so), which torch_npu, GE and MindSpore also call directly. The table of intercepted names, their
 * signatures, error codes and sources is SYMBOLS.md. A call of the AscendCL layer that reaches the runtime
 * layer is gated once: the runtime wrappers pass straight through while a wrapper of this file is running.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>

#include "gate.h"
#include "real.h"

typedef int aclError;
typedef int rtError_t;
typedef void *aclrtStream;
typedef void *aclrtEvent;
typedef void *aclrtFuncHandle;
typedef void *aclrtDrvMemHandle;
typedef void *aclrtArgsHandle;
typedef struct aclrtLaunchKernelCfg aclrtLaunchKernelCfg;
typedef struct aclrtPhysicalMemProp aclrtPhysicalMemProp;
typedef struct aclrtMallocConfig aclrtMallocConfig;
typedef struct aclmdlDataset aclmdlDataset;
typedef struct aclTensorDesc aclTensorDesc;
typedef struct aclDataBuffer aclDataBuffer;
typedef struct aclopAttr aclopAttr;
typedef int aclrtMemMallocPolicy; /* enums: int-sized in the C ABI */
typedef int aclrtMemAttr;
typedef int aclrtMemcpyKind;
typedef int aclopEngineType;
typedef int aclopCompileType;
typedef int rtMemInfoType_t;
typedef uint32_t rtMemType_t;
typedef void *rtStream_t;
typedef void *rtModel_t;
typedef struct rtSmDesc rtSmDesc_t;

#define ACL_SUCCESS 0
#define ACL_ERROR_RT_MEMORY_ALLOCATION 207001 /* acl_base.h: "memory allocation error" (also rtError_t) */
#define ACL_ERROR_RT_INTERNAL_ERROR 507899
#define ACL_HBM_MEM 1
#define ACL_EVENT_RECORDED_STATUS_COMPLETE 1

#define ACL_SYMBOLS(X)                                                                                           \
    X(aclrtMalloc) X(aclrtMallocCached) X(aclrtMallocAlign32) X(aclrtMallocWithCfg) X(aclrtFree)                  \
    X(aclrtMallocPhysical) X(aclrtFreePhysical) X(aclrtGetMemInfo) X(aclrtLaunchKernel)                           \
    X(aclrtLaunchKernelWithConfig) X(aclopExecuteV2) X(aclopCompileAndExecute) X(aclmdlExecute)                   \
    X(aclmdlExecuteAsync) X(aclrtMemcpyAsync) X(aclrtSynchronizeStream) X(aclrtSynchronizeDevice)                 \
    X(aclrtSynchronizeEvent) X(rtMalloc) X(rtFree) X(rtMemGetInfoEx) X(rtMemGetInfo) X(rtKernelLaunch)            \
    X(rtModelExecute) X(rtStreamSynchronize) X(rtDeviceSynchronize)

#define FX_ENUM(name) I_##name,
#define FX_NAME(name) #name,
#define FX_WRAPPER(name) (void *)name,
enum { ACL_SYMBOLS(FX_ENUM) ACL_COUNT };

/* The wrappers are defined below; declare them for the table. */
#define FX_DECLARE(name) extern __typeof__(name##_t) name;
typedef aclError aclrtMalloc_t(void **, size_t, aclrtMemMallocPolicy);
typedef aclError aclrtMallocCached_t(void **, size_t, aclrtMemMallocPolicy);
typedef aclError aclrtMallocAlign32_t(void **, size_t, aclrtMemMallocPolicy);
typedef aclError aclrtMallocWithCfg_t(void **, size_t, aclrtMemMallocPolicy, aclrtMallocConfig *);
typedef aclError aclrtFree_t(void *);
typedef aclError aclrtMallocPhysical_t(aclrtDrvMemHandle *, size_t, const aclrtPhysicalMemProp *, uint64_t);
typedef aclError aclrtFreePhysical_t(aclrtDrvMemHandle);
typedef aclError aclrtGetMemInfo_t(aclrtMemAttr, size_t *, size_t *);
typedef aclError aclrtLaunchKernel_t(aclrtFuncHandle, uint32_t, const void *, size_t, aclrtStream);
typedef aclError aclrtLaunchKernelWithConfig_t(aclrtFuncHandle, uint32_t, aclrtStream, aclrtLaunchKernelCfg *,
                                               aclrtArgsHandle, void *);
typedef aclError aclopExecuteV2_t(const char *, int, aclTensorDesc *[], aclDataBuffer *[], int, aclTensorDesc *[],
                                  aclDataBuffer *[], aclopAttr *, aclrtStream);
typedef aclError aclopCompileAndExecute_t(const char *, int, const aclTensorDesc *const[],
                                          const aclDataBuffer *const[], int, const aclTensorDesc *const[],
                                          aclDataBuffer *const[], const aclopAttr *, aclopEngineType,
                                          aclopCompileType, const char *, aclrtStream);
typedef aclError aclmdlExecute_t(uint32_t, const aclmdlDataset *, aclmdlDataset *);
typedef aclError aclmdlExecuteAsync_t(uint32_t, const aclmdlDataset *, aclmdlDataset *, aclrtStream);
typedef aclError aclrtMemcpyAsync_t(void *, size_t, const void *, size_t, aclrtMemcpyKind, aclrtStream);
typedef aclError aclrtSynchronizeStream_t(aclrtStream);
typedef aclError aclrtSynchronizeDevice_t(void);
typedef aclError aclrtSynchronizeEvent_t(aclrtEvent);
typedef rtError_t rtMalloc_t(void **, uint64_t, rtMemType_t, uint16_t);
typedef rtError_t rtFree_t(void *);
typedef rtError_t rtMemGetInfoEx_t(rtMemInfoType_t, size_t *, size_t *);
typedef rtError_t rtMemGetInfo_t(size_t *, size_t *);
typedef rtError_t rtKernelLaunch_t(const void *, uint32_t, void *, uint32_t, rtSmDesc_t *, rtStream_t);
typedef rtError_t rtModelExecute_t(rtModel_t, rtStream_t, uint32_t);
typedef rtError_t rtStreamSynchronize_t(rtStream_t);
typedef rtError_t rtDeviceSynchronize_t(void);
ACL_SYMBOLS(FX_DECLARE)

static const char *const g_names[] = {ACL_SYMBOLS(FX_NAME)};
static void *const g_wrappers[] = {ACL_SYMBOLS(FX_WRAPPER)};
static void *_Atomic g_real[ACL_COUNT];
static const char *const g_libraries[] = {"libascendcl.so", "libruntime.so", NULL};
static struct fx_symbols g_table = {ACL_COUNT, g_names, g_wrappers, g_real, g_libraries};

struct fx_symbols *fx_acl_symbols(void) { return &g_table; }

#define REAL(name) ((name##_t *)fx_real_fast(&g_table, I_##name))

/* ---- the wrapper shapes (wrap.h) --------------------------------------------------------------------------- */

typedef aclError fx_result;
#define FX_OK ACL_SUCCESS
#define FX_NO_MEMORY ACL_ERROR_RT_MEMORY_ALLOCATION
#define MISSING ACL_ERROR_RT_INTERNAL_ERROR
#include "wrap.h"

/* ---- device events for the core (the interposer's own events, through the real AscendCL) ---------------- */

typedef aclError create_event_t(aclrtEvent *);
typedef aclError destroy_event_t(aclrtEvent);
typedef aclError record_event_t(aclrtEvent, aclrtStream);
typedef aclError query_event_t(aclrtEvent, int *);
typedef aclError elapsed_t(float *, aclrtEvent, aclrtEvent);

static int ev_create(void **event)
{
    HELPER(create_event_t, "aclrtCreateEvent");
    return f ? f(event) : -1;
}
static void ev_destroy(void *event)
{
    HELPER(destroy_event_t, "aclrtDestroyEvent");
    if (f)
        f(event);
}
static int ev_record(void *event, void *stream)
{
    HELPER(record_event_t, "aclrtRecordEvent");
    return f ? f(event, stream) : -1;
}
static int ev_done(void *event)
{
    HELPER(query_event_t, "aclrtQueryEventStatus");
    int status = 0;
    if (!f || f(event, &status) != ACL_SUCCESS)
        return -1;
    return status == ACL_EVENT_RECORDED_STATUS_COMPLETE;
}
static int ev_sync(void *event)
{
    aclrtSynchronizeEvent_t *f = REAL(aclrtSynchronizeEvent);
    return f ? f(event) : -1;
}
static int ev_elapsed(void *start, void *end, uint64_t *ns)
{
    HELPER(elapsed_t, "aclrtEventElapsedTime");
    float ms = 0;
    if (!f || f(&ms, start, end) != ACL_SUCCESS)
        return -1;
    return fx_ms_to_ns(ms, ns);
}
static int dev_sync(void)
{
    aclrtSynchronizeDevice_t *f = REAL(aclrtSynchronizeDevice);
    return f ? f() : -1;
}
static int not_capturing(void *stream)
{
    (void)stream;
    return 0;
}

static const struct fx_ops g_ops = {FX_ABI_ACL, ev_create, ev_destroy, ev_record, ev_done,
                                    ev_sync, ev_elapsed, dev_sync, not_capturing};

/* ---- AscendCL --------------------------------------------------------------------------------------------- */

FX_EXPORT aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy)
{
    ALLOCATE(aclrtMalloc, devPtr, size, devPtr, size, policy);
}

FX_EXPORT aclError aclrtMallocCached(void **devPtr, size_t size, aclrtMemMallocPolicy policy)
{
    ALLOCATE(aclrtMallocCached, devPtr, size, devPtr, size, policy);
}

FX_EXPORT aclError aclrtMallocAlign32(void **devPtr, size_t size, aclrtMemMallocPolicy policy)
{
    ALLOCATE(aclrtMallocAlign32, devPtr, size, devPtr, size, policy);
}

FX_EXPORT aclError aclrtMallocWithCfg(void **devPtr, size_t size, aclrtMemMallocPolicy policy,
                                      aclrtMallocConfig *cfg)
{
    ALLOCATE(aclrtMallocWithCfg, devPtr, size, devPtr, size, policy, cfg);
}

FX_EXPORT aclError aclrtFree(void *devPtr) { RELEASE(aclrtFree, devPtr, devPtr); }

FX_EXPORT aclError aclrtMallocPhysical(aclrtDrvMemHandle *handle, size_t size, const aclrtPhysicalMemProp *prop,
                                       uint64_t flags)
{
    ALLOCATE(aclrtMallocPhysical, handle, size, handle, size, prop, flags);
}

FX_EXPORT aclError aclrtFreePhysical(aclrtDrvMemHandle handle) { RELEASE(aclrtFreePhysical, handle, handle); }

FX_EXPORT aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free_bytes, size_t *total)
{
    aclrtGetMemInfo_t *real = REAL(aclrtGetMemInfo);
    if (!real)
        return MISSING;
    fx_nest_in();
    aclError r = real(attr, free_bytes, total);
    fx_nest_out();
    /* HBM kinds (ACL_HBM_MEM, _HUGE, _NORMAL, _P2P_*) are device memory; DDR kinds are host-side */
    int hbm = attr == ACL_HBM_MEM || attr == 4 || attr == 5 || attr == 8 || attr == 9;
    return hbm ? fx_mem_viewed(r, free_bytes, total) : r;
}

FX_EXPORT aclError aclrtLaunchKernel(aclrtFuncHandle funcHandle, uint32_t blockDim, const void *argsData,
                                     size_t argsSize, aclrtStream stream)
{
    GATED(aclrtLaunchKernel, stream, funcHandle, blockDim, argsData, argsSize, stream);
}

FX_EXPORT aclError aclrtLaunchKernelWithConfig(aclrtFuncHandle funcHandle, uint32_t numBlocks, aclrtStream stream,
                                               aclrtLaunchKernelCfg *cfg, aclrtArgsHandle argsHandle, void *reserve)
{
    GATED(aclrtLaunchKernelWithConfig, stream, funcHandle, numBlocks, stream, cfg, argsHandle, reserve);
}

FX_EXPORT aclError aclopExecuteV2(const char *opType, int numInputs, aclTensorDesc *inputDesc[],
                                  aclDataBuffer *inputs[], int numOutputs, aclTensorDesc *outputDesc[],
                                  aclDataBuffer *outputs[], aclopAttr *attr, aclrtStream stream)
{
    GATED(aclopExecuteV2, stream, opType, numInputs, inputDesc, inputs, numOutputs, outputDesc, outputs, attr,
          stream);
}

FX_EXPORT aclError aclopCompileAndExecute(const char *opType, int numInputs, const aclTensorDesc *const inputDesc[],
                                          const aclDataBuffer *const inputs[], int numOutputs,
                                          const aclTensorDesc *const outputDesc[], aclDataBuffer *const outputs[],
                                          const aclopAttr *attr, aclopEngineType engineType,
                                          aclopCompileType compileFlag, const char *opPath, aclrtStream stream)
{
    GATED(aclopCompileAndExecute, stream, opType, numInputs, inputDesc, inputs, numOutputs, outputDesc, outputs,
          attr, engineType, compileFlag, opPath, stream);
}

/* Synchronous model execution has no stream of ours to put an event on: gated, timed on the host clock. */
FX_EXPORT aclError aclmdlExecute(uint32_t modelId, const aclmdlDataset *input, aclmdlDataset *output)
{
    aclmdlExecute_t *real = REAL(aclmdlExecute);
    if (!real)
        return MISSING;
    if (fx_nested())
        return real(modelId, input, output);
    fx_gate_only(&g_ops);
    uint64_t t0 = fx_now_ns();
    fx_nest_in();
    aclError r = real(modelId, input, output);
    fx_nest_out();
    fx_account_sync_ns(fx_now_ns() - t0);
    return r;
}

FX_EXPORT aclError aclmdlExecuteAsync(uint32_t modelId, const aclmdlDataset *input, aclmdlDataset *output,
                                      aclrtStream stream)
{
    GATED(aclmdlExecuteAsync, stream, modelId, input, output, stream);
}

FX_EXPORT aclError aclrtMemcpyAsync(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind,
                                    aclrtStream stream)
{
    GATED(aclrtMemcpyAsync, stream, dst, destMax, src, count, kind, stream);
}

FX_EXPORT aclError aclrtSynchronizeStream(aclrtStream stream) { SYNCED(aclrtSynchronizeStream, 0, stream); }
FX_EXPORT aclError aclrtSynchronizeDevice(void) { SYNCED(aclrtSynchronizeDevice, 1); }
FX_EXPORT aclError aclrtSynchronizeEvent(aclrtEvent event) { SYNCED(aclrtSynchronizeEvent, 0, event); }

/* ---- runtime layer (libruntime.so) ------------------------------------------------------------------------- */

FX_EXPORT rtError_t rtMalloc(void **devPtr, uint64_t size, rtMemType_t type, uint16_t moduleId)
{
    ALLOCATE(rtMalloc, devPtr, size, devPtr, size, type, moduleId);
}

FX_EXPORT rtError_t rtFree(void *devPtr) { RELEASE(rtFree, devPtr, devPtr); }

FX_EXPORT rtError_t rtMemGetInfoEx(rtMemInfoType_t memInfoType, size_t *free_bytes, size_t *total)
{
    rtMemGetInfoEx_t *real = REAL(rtMemGetInfoEx);
    if (!real)
        return MISSING;
    if (fx_nested())
        return real(memInfoType, free_bytes, total);
    int hbm = memInfoType == ACL_HBM_MEM || memInfoType == 4 || memInfoType == 5 || memInfoType == 8 ||
              memInfoType == 9;
    rtError_t r = real(memInfoType, free_bytes, total);
    return hbm ? fx_mem_viewed(r, free_bytes, total) : r;
}

FX_EXPORT rtError_t rtMemGetInfo(size_t *free_bytes, size_t *total)
{
    rtMemGetInfo_t *real = REAL(rtMemGetInfo);
    if (!real)
        return MISSING;
    if (fx_nested())
        return real(free_bytes, total);
    return fx_mem_viewed(real(free_bytes, total), free_bytes, total);
}

FX_EXPORT rtError_t rtKernelLaunch(const void *stubFunc, uint32_t blockDim, void *args, uint32_t argsSize,
                                   rtSmDesc_t *smDesc, rtStream_t stm)
{
    GATED(rtKernelLaunch, stm, stubFunc, blockDim, args, argsSize, smDesc, stm);
}

FX_EXPORT rtError_t rtModelExecute(rtModel_t model, rtStream_t stm, uint32_t flag)
{
    GATED(rtModelExecute, stm, model, stm, flag);
}

FX_EXPORT rtError_t rtStreamSynchronize(rtStream_t stm) { SYNCED(rtStreamSynchronize, 0, stm); }
FX_EXPORT rtError_t rtDeviceSynchronize(void) { SYNCED(rtDeviceSynchronize, 1); }
