/* Fake libruntime.so: the CANN runtime layer (rt*) beneath AscendCL, on the simulated device (fakedev.h).
 * Names and signatures as the CANN runtime exports them (see shim/native/SYMBOLS.md); rtError_t values are the
 * ACL_ERROR_RT_* codes. Kernel duration: the first 8 bytes of args, in microseconds (only this fake reads it).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fakedev.h"

typedef int rtError_t;
typedef void *rtStream_t;
typedef void *rtEvent_t;
typedef void *rtModel_t;
typedef struct rtSmDesc rtSmDesc_t;

#define RT_ERROR_NONE 0
#define ACL_ERROR_RT_PARAM_INVALID 107000
#define ACL_ERROR_RT_MEMORY_ALLOCATION 207001
#define ACL_ERROR_RT_EVENT_NOT_COMPLETE 207020 /* fake's "not yet" for rtEventQuery */

static uint64_t micros(const void *arg, uint64_t size)
{
    uint64_t us = 0;
    if (arg && size >= sizeof us)
        memcpy(&us, arg, sizeof us);
    return us * 1000u;
}

FD_EXPORT rtError_t rtMalloc(void **devPtr, uint64_t size, uint32_t type, uint16_t moduleId)
{
    (void)type;
    (void)moduleId;
    uint64_t address = 0;
    if (!devPtr)
        return ACL_ERROR_RT_PARAM_INVALID;
    if (fd_alloc(size, &address) != 0)
        return ACL_ERROR_RT_MEMORY_ALLOCATION;
    *devPtr = (void *)(uintptr_t)address;
    return RT_ERROR_NONE;
}

FD_EXPORT rtError_t rtFree(void *devPtr)
{
    return fd_free((uint64_t)(uintptr_t)devPtr) == 0 ? RT_ERROR_NONE : ACL_ERROR_RT_PARAM_INVALID;
}

FD_EXPORT rtError_t rtMemGetInfoEx(int type, size_t *free_bytes, size_t *total)
{
    (void)type;
    uint64_t f, t;
    if (!free_bytes || !total)
        return ACL_ERROR_RT_PARAM_INVALID;
    fd_mem_info(&f, &t);
    *free_bytes = (size_t)f;
    *total = (size_t)t;
    return RT_ERROR_NONE;
}

FD_EXPORT rtError_t rtMemGetInfo(size_t *free_bytes, size_t *total) { return rtMemGetInfoEx(1, free_bytes, total); }

FD_EXPORT rtError_t rtKernelLaunch(const void *stubFunc, uint32_t blockDim, void *args, uint32_t argsSize,
                                   rtSmDesc_t *smDesc, rtStream_t stm)
{
    (void)stubFunc;
    (void)blockDim;
    (void)smDesc;
    fd_launch(fd_stream_of(stm), micros(args, argsSize));
    return RT_ERROR_NONE;
}

/* A fake model is its duration: model points to a uint64 of microseconds. */
FD_EXPORT rtError_t rtModelExecute(rtModel_t model, rtStream_t stm, uint32_t flag)
{
    (void)flag;
    fd_launch(fd_stream_of(stm), micros(model, 8));
    return RT_ERROR_NONE;
}

FD_EXPORT rtError_t rtMemcpyAsync(void *dst, uint64_t destMax, const void *src, uint64_t count, int kind,
                                  rtStream_t stm)
{
    (void)dst;
    (void)src;
    (void)kind;
    if (count > destMax)
        return ACL_ERROR_RT_PARAM_INVALID;
    fd_launch(fd_stream_of(stm), 1000 + count / 20); /* 1 us + 20 GB/s */
    return RT_ERROR_NONE;
}

FD_EXPORT rtError_t rtStreamCreate(rtStream_t *stm, int32_t priority)
{
    (void)priority;
    *stm = fd_stream_new();
    return *stm ? RT_ERROR_NONE : ACL_ERROR_RT_MEMORY_ALLOCATION;
}

FD_EXPORT rtError_t rtStreamDestroy(rtStream_t stm)
{
    fd_stream_free(stm);
    return RT_ERROR_NONE;
}

FD_EXPORT rtError_t rtStreamSynchronize(rtStream_t stm)
{
    fd_stream_wait(fd_stream_of(stm));
    return RT_ERROR_NONE;
}

FD_EXPORT rtError_t rtDeviceSynchronize(void)
{
    fd_device_wait();
    return RT_ERROR_NONE;
}

FD_EXPORT rtError_t rtEventCreate(rtEvent_t *event)
{
    *event = calloc(1, sizeof(struct fd_event));
    return *event ? RT_ERROR_NONE : ACL_ERROR_RT_MEMORY_ALLOCATION;
}

FD_EXPORT rtError_t rtEventDestroy(rtEvent_t event)
{
    free(event);
    return RT_ERROR_NONE;
}

FD_EXPORT rtError_t rtEventRecord(rtEvent_t event, rtStream_t stm)
{
    if (!event)
        return ACL_ERROR_RT_PARAM_INVALID;
    fd_event_record(event, fd_stream_of(stm));
    return RT_ERROR_NONE;
}

FD_EXPORT rtError_t rtEventQuery(rtEvent_t event)
{
    return fd_event_done(event) ? RT_ERROR_NONE : ACL_ERROR_RT_EVENT_NOT_COMPLETE;
}

FD_EXPORT rtError_t rtEventSynchronize(rtEvent_t event)
{
    fd_event_wait(event);
    return RT_ERROR_NONE;
}

FD_EXPORT rtError_t rtEventElapsedTime(float *ms, rtEvent_t start, rtEvent_t end)
{
    const struct fd_event *s = start, *e = end;
    if (!ms || !s || !e || !s->recorded || !e->recorded || e->at_ns < s->at_ns)
        return ACL_ERROR_RT_PARAM_INVALID;
    *ms = (float)((double)(e->at_ns - s->at_ns) / 1e6);
    return RT_ERROR_NONE;
}
