/* The simulated device behind the fake libascendcl/libruntime/libcuda: the simulated node's card (`flexnpu demo`)
 * and the native tests' device. Built by the install (shim/simnpu/native/Makefile, run by setup.py's build_py).
 *
 * One file in shared memory (path: FLEXNPU_FAKEDEV) that every process using a fake library maps: a process-shared
 * robust mutex, one non-preemptive engine (a launch completes at max(now, engine busy until, its stream's last
 * completion) + its duration), a memory capacity the device enforces itself (FLEXNPU_FAKEDEV_MIB, default 65536),
 * and ground truth per client pid: busy time, launches, memory (for the tests' checks only). A kernel's duration
 * travels in its argument, which only this device reads. Layout (read by flexnpu.shim.simnpu.native and
 * tests/native/native_helpers.py):
 *   0 u32 magic 0x56444B46 "FKDV", 4 u32 state (0 new, 1 initialising, 2 ready), 8 u64 capacity, 16 u64 used,
 *   24 u64 busy_until_ns, 32 u64 launches, 40 u64 log_count; 128 pthread_mutex_t; 512 + 64*i struct fd_client
 *   (64 clients); 8192 + 24*i the kernel log, a ring of 2^18 records {i32 pid, u32 pad, u64 start_ns, u64 end_ns}
 *   (CLOCK_MONOTONIC device start and end of every kernel; record i at i % 2^18): the benchmarks' per-window meter.
 */
#ifndef FLEXNPU_FAKEDEV_H
#define FLEXNPU_FAKEDEV_H

#include <stdint.h>

#define FD_EXPORT __attribute__((visibility("default")))

struct fd_stream {
    uint64_t last_ns; /* completion time of the last work queued on this stream */
};

struct fd_event {
    uint64_t at_ns; /* completion time of the work before it on its stream */
    int recorded;
};

struct fd_stream *fd_stream_of(void *handle); /* NULL: the process's default stream */
struct fd_stream *fd_stream_new(void);
void fd_stream_free(struct fd_stream *s);
/* Queue work of duration_ns; returns its completion time. */
uint64_t fd_launch(struct fd_stream *s, uint64_t duration_ns);
int fd_alloc(uint64_t bytes, uint64_t *address); /* 0 ok, -1 out of device memory */
int fd_free(uint64_t address);                   /* 0 ok, -1 unknown address */
void fd_mem_info(uint64_t *free_bytes, uint64_t *total);
void fd_event_record(struct fd_event *e, struct fd_stream *s);
int fd_event_done(const struct fd_event *e);
void fd_event_wait(const struct fd_event *e);
void fd_stream_wait(struct fd_stream *s);
void fd_device_wait(void);
uint64_t fd_now_ns(void);
/* The live processes holding device memory, as a driver's process table shows them (the fake NVML): the first
 * max of them into pids/bytes; returns how many there are. */
unsigned fd_memory_users(unsigned max, int32_t *pids, uint64_t *bytes);

#endif
