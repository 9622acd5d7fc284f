/* The ABI-agnostic core of libflexnpu: the grant word, the in-flight cap, the pod-wide memory account.
 *
 * acl.c and cuda.c are thin wrappers: they resolve the real symbol, call fx_launch_enter before a launch and
 * fx_launch_exit after it, fx_mem_reserve / fx_mem_commit / fx_mem_release around allocations, and hand the core
 * a table of device-event operations (struct fx_ops) so that the core can measure device time without
 * knowing the ABI. Nothing here reads a kernel's arguments: device time comes from device events only.
 */
#ifndef FLEXNPU_GATE_H
#define FLEXNPU_GATE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define FX_EXPORT __attribute__((visibility("default")))

/* Device-event operations of one ABI; every function returns 0 on success. */
struct fx_ops {
    int abi;                                   /* index into the per-thread timing state: FX_ABI_* */
    int (*event_create)(void **event);
    void (*event_destroy)(void *event);
    int (*event_record)(void *event, void *stream);
    int (*event_done)(void *event);            /* 1 complete, 0 not yet, <0 error */
    int (*event_sync)(void *event);
    int (*elapsed_ns)(void *start, void *end, uint64_t *ns);
    int (*device_sync)(void);
    int (*stream_capturing)(void *stream);     /* 1 when launches on the stream are captured, not run */
};

enum { FX_ABI_ACL = 0, FX_ABI_CUDA = 1, FX_ABI_COUNT = 2 };

enum fx_mode { FX_UNGATED = 0, FX_LOCAL = 1, FX_GRANTED = 2 };

/* Initialise once (constructor, or the first wrapper called, whichever comes first). Never aborts. */
void fx_init(void);
enum fx_mode fx_mode(void);

/* Per thread: >0 while inside a wrapper's call of the real function (the layer beneath is then not gated
 * again: aclrtMalloc -> rtMalloc counts once). */
extern __thread int fx_depth __attribute__((tls_model("initial-exec")));
static inline int fx_nested(void) { return fx_depth; }
static inline void fx_nest_in(void) { fx_depth++; }
static inline void fx_nest_out(void) { fx_depth--; }

/* Around every launch-like call (kernel, graph, model, async copy). enter may block until granted. */
void fx_launch_enter(const struct fx_ops *ops, void *stream);
void fx_launch_exit(const struct fx_ops *ops, void *stream, int launched);
/* The grant (and in-flight) check of fx_launch_enter without opening a timing interval: for synchronous calls. */
void fx_gate_only(const struct fx_ops *ops);
/* Time of a synchronous device call measured on the host clock (no stream to put an event on). */
void fx_account_sync_ns(uint64_t ns);
/* Before an application synchronise: the thread's open timing interval ends here, its end event queued behind the
 * launches it times (recorded after the synchronise returned, it would be stamped then: the host's wake-up, and
 * any kernel of the next holder started meanwhile, would count as this tenant's device time). */
void fx_sync_enter(const struct fx_ops *ops);
/* After the application synchronised: collect what completed (non-blocking); device_idle: the whole device
 * (context) was synchronised, so the open interval ends too. */
void fx_harvest(const struct fx_ops *ops, int device_idle);

/* Memory: reserve before the real allocation (0 ok, -1 over the cap: return the ABI's OOM code), then commit the
 * pointer (or release on failure); forget returns the bytes recorded for a pointer at free. */
int fx_mem_reserve(uint64_t bytes);
void fx_mem_unreserve(uint64_t bytes);
void fx_mem_commit(uint64_t key, uint64_t bytes);
uint64_t fx_mem_forget(uint64_t key);
/* The slice's view of device memory: total = min(real total, cap), free = min(real free, cap - used). */
void fx_mem_view(size_t *free_bytes, size_t *total_bytes);

/* Internal to the core: account.c's fork handlers and its view of the mapped slot. */
struct fx_slot;
struct fx_slot *fx_slot_for_account(void);
/* The mapped slot's file descriptor (close-on-exec; -1 without a slot) and the identity of the file mapped. */
int fx_slot_file_for_account(dev_t *dev, ino_t *ino);
void fx_mem_atfork_prepare(void);
void fx_mem_atfork_parent(void);
void fx_mem_atfork_child(void);

uint64_t fx_now_ns(void);
void fx_log_once(int *flag, const char *message);

#endif
