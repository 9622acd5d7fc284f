/* Fake libascendcl.so: AscendCL on top of the fake runtime layer (libruntime.so), layered as CANN is: every
 * aclrt* call below reaches an rt* function through the PLT, so an interposer that wraps both layers must count
 * each call once. Names, signatures and error codes as hicann/runtime include/external/acl/acl_*.h declare them.
 * Durations (only this fake reads them): aclrtLaunchKernel argsData -> uint64 us; aclrtLaunchKernelWithConfig
 * argsHandle -> uint64 us; aclopExecuteV2 / aclopCompileAndExecute attr -> uint64 us; aclmdlExecute(Async)
 * modelId = us.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>

#include "fakedev.h"

typedef int aclError;
typedef void *aclrtStream;
typedef void *aclrtEvent;
typedef int rtError_t;

#define ACL_SUCCESS 0
#define ACL_ERROR_INVALID_PARAM 100000
#define ACL_EVENT_RECORDED_STATUS_NOT_READY 0
#define ACL_EVENT_RECORDED_STATUS_COMPLETE 1

rtError_t rtMalloc(void **devPtr, uint64_t size, uint32_t type, uint16_t moduleId);
rtError_t rtFree(void *devPtr);
rtError_t rtMemGetInfoEx(int type, size_t *free_bytes, size_t *total);
rtError_t rtKernelLaunch(const void *stubFunc, uint32_t blockDim, void *args, uint32_t argsSize, void *smDesc,
                         void *stm);
rtError_t rtModelExecute(void *model, void *stm, uint32_t flag);
rtError_t rtMemcpyAsync(void *dst, uint64_t destMax, const void *src, uint64_t count, int kind, void *stm);
rtError_t rtStreamCreate(void **stm, int32_t priority);
rtError_t rtStreamDestroy(void *stm);
rtError_t rtStreamSynchronize(void *stm);
rtError_t rtDeviceSynchronize(void);
rtError_t rtEventCreate(void **event);
rtError_t rtEventDestroy(void *event);
rtError_t rtEventRecord(void *event, void *stm);
rtError_t rtEventQuery(void *event);
rtError_t rtEventSynchronize(void *event);
rtError_t rtEventElapsedTime(float *ms, void *start, void *end);

#define RT_MEMORY_HBM 2u

FD_EXPORT aclError aclInit(const char *configPath)
{
    (void)configPath;
    return ACL_SUCCESS;
}
FD_EXPORT aclError aclFinalize(void) { return ACL_SUCCESS; }
FD_EXPORT aclError aclrtSetDevice(int32_t deviceId) { return deviceId == 0 ? ACL_SUCCESS : ACL_ERROR_INVALID_PARAM; }
FD_EXPORT aclError aclrtResetDevice(int32_t deviceId) { return deviceId == 0 ? ACL_SUCCESS : ACL_ERROR_INVALID_PARAM; }
FD_EXPORT aclError aclrtCreateStream(aclrtStream *stream) { return rtStreamCreate(stream, 0); }
FD_EXPORT aclError aclrtDestroyStream(aclrtStream stream) { return rtStreamDestroy(stream); }

FD_EXPORT aclError aclrtMalloc(void **devPtr, size_t size, int policy)
{
    (void)policy;
    return rtMalloc(devPtr, size, RT_MEMORY_HBM, 0);
}
FD_EXPORT aclError aclrtMallocCached(void **devPtr, size_t size, int policy)
{
    (void)policy;
    return rtMalloc(devPtr, size, RT_MEMORY_HBM, 0);
}
FD_EXPORT aclError aclrtMallocAlign32(void **devPtr, size_t size, int policy)
{
    (void)policy;
    return rtMalloc(devPtr, size, RT_MEMORY_HBM, 0);
}
FD_EXPORT aclError aclrtMallocWithCfg(void **devPtr, size_t size, int policy, void *cfg)
{
    (void)policy;
    (void)cfg;
    return rtMalloc(devPtr, size, RT_MEMORY_HBM, 0);
}
FD_EXPORT aclError aclrtFree(void *devPtr) { return rtFree(devPtr); }
FD_EXPORT aclError aclrtMallocPhysical(void **handle, size_t size, const void *prop, uint64_t flags)
{
    (void)prop;
    (void)flags;
    return rtMalloc(handle, size, RT_MEMORY_HBM, 0);
}
FD_EXPORT aclError aclrtFreePhysical(void *handle) { return rtFree(handle); }
FD_EXPORT aclError aclrtGetMemInfo(int attr, size_t *free_bytes, size_t *total)
{
    if (!free_bytes || !total)
        return ACL_ERROR_INVALID_PARAM;
    return rtMemGetInfoEx(attr, free_bytes, total);
}

FD_EXPORT aclError aclrtLaunchKernel(void *funcHandle, uint32_t blockDim, const void *argsData, size_t argsSize,
                                     aclrtStream stream)
{
    return rtKernelLaunch(funcHandle, blockDim, (void *)argsData, (uint32_t)argsSize, NULL, stream);
}
FD_EXPORT aclError aclrtLaunchKernelWithConfig(void *funcHandle, uint32_t numBlocks, aclrtStream stream, void *cfg,
                                               void *argsHandle, void *reserve)
{
    (void)cfg;
    (void)reserve;
    return rtKernelLaunch(funcHandle, numBlocks, argsHandle, 8, NULL, stream);
}
FD_EXPORT aclError aclopExecuteV2(const char *opType, int numInputs, void *inputDesc[], void *inputs[],
                                  int numOutputs, void *outputDesc[], void *outputs[], void *attr,
                                  aclrtStream stream)
{
    (void)opType, (void)numInputs, (void)inputDesc, (void)inputs, (void)numOutputs, (void)outputDesc;
    (void)outputs;
    return rtKernelLaunch(NULL, 1, attr, 8, NULL, stream);
}
FD_EXPORT aclError aclopCompileAndExecute(const char *opType, int numInputs, void *const inputDesc[],
                                          void *const inputs[], int numOutputs, void *const outputDesc[],
                                          void *const outputs[], const void *attr, int engineType,
                                          int compileFlag, const char *opPath, aclrtStream stream)
{
    (void)opType, (void)numInputs, (void)inputDesc, (void)inputs, (void)numOutputs, (void)outputDesc;
    (void)outputs, (void)engineType, (void)compileFlag, (void)opPath;
    return rtKernelLaunch(NULL, 1, (void *)attr, 8, NULL, stream);
}
static aclError execute_model(uint32_t modelId, aclrtStream stream)
{
    uint64_t us = modelId;
    return rtModelExecute(&us, stream, 0);
}
FD_EXPORT aclError aclmdlExecuteAsync(uint32_t modelId, const void *input, void *output, aclrtStream stream)
{
    (void)input;
    (void)output;
    return execute_model(modelId, stream);
}
FD_EXPORT aclError aclmdlExecute(uint32_t modelId, const void *input, void *output)
{
    (void)input;
    (void)output;
    aclError r = execute_model(modelId, NULL);
    return r ? r : rtStreamSynchronize(NULL);
}
FD_EXPORT aclError aclrtMemcpyAsync(void *dst, size_t destMax, const void *src, size_t count, int kind,
                                    aclrtStream stream)
{
    return rtMemcpyAsync(dst, destMax, src, count, kind, stream);
}
FD_EXPORT aclError aclrtSynchronizeStream(aclrtStream stream) { return rtStreamSynchronize(stream); }
FD_EXPORT aclError aclrtSynchronizeDevice(void) { return rtDeviceSynchronize(); }
FD_EXPORT aclError aclrtCreateEvent(aclrtEvent *event) { return rtEventCreate(event); }
FD_EXPORT aclError aclrtDestroyEvent(aclrtEvent event) { return rtEventDestroy(event); }
FD_EXPORT aclError aclrtRecordEvent(aclrtEvent event, aclrtStream stream) { return rtEventRecord(event, stream); }
FD_EXPORT aclError aclrtQueryEventStatus(aclrtEvent event, int *status)
{
    if (!status)
        return ACL_ERROR_INVALID_PARAM;
    *status = rtEventQuery(event) == 0 ? ACL_EVENT_RECORDED_STATUS_COMPLETE : ACL_EVENT_RECORDED_STATUS_NOT_READY;
    return ACL_SUCCESS;
}
FD_EXPORT aclError aclrtSynchronizeEvent(aclrtEvent event) { return rtEventSynchronize(event); }
FD_EXPORT aclError aclrtEventElapsedTime(float *ms, aclrtEvent startEvent, aclrtEvent endEvent)
{
    return rtEventElapsedTime(ms, startEvent, endEvent);
}
