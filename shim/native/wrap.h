/* The shapes every wrapper of acl.c and cuda.c takes, written once. Macros, not functions: each wrapper forwards
 * its own argument list to its own real function, and returns from the wrapper itself.
 *
 * The including file defines, before it includes this header:
 *   fx_result       the ABI's result type (aclError, CUresult)
 *   FX_OK           its success value
 *   FX_NO_MEMORY    what an allocation refused by the pod's memory cap returns
 *   MISSING         what a wrapper returns when the real function cannot be found
 *   REAL(name)      the real function behind the wrapper `name` (name##_t *)
 * and, before it uses the macros, `g_ops` (its struct fx_ops) and `g_libraries` (the libraries its helpers are
 * resolved in). Every macro passes straight through while another wrapper's real call is running (fx_nested):
 * the layer beneath an intercepted call is gated and accounted once.
 */
#ifndef FLEXNPU_WRAP_H
#define FLEXNPU_WRAP_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "gate.h"
#include "real.h"

/* Resolve the real function, or pass straight through when nested; the caller continues with real_. */
#define FX_REAL_OR_PASS(name, ...)                                                                               \
    name##_t *real_ = REAL(name);                                                                                \
    if (!real_)                                                                                                  \
        return MISSING;                                                                                          \
    if (fx_nested())                                                                                             \
        return real_(__VA_ARGS__)

/* The real call, marked as nested for the wrappers it reaches; its result in r_. */
#define FX_CALL_REAL(...)                                                                                        \
    fx_nest_in();                                                                                                \
    fx_result r_ = real_(__VA_ARGS__);                                                                           \
    fx_nest_out()

/* A launch-like call on `stream` (evaluated once): gated, and timed by the core's events. */
#define GATED(name, stream, ...)                                                                                 \
    do {                                                                                                         \
        FX_REAL_OR_PASS(name, __VA_ARGS__);                                                                      \
        void *s_ = (void *)(stream);                                                                             \
        fx_launch_enter(&g_ops, s_);                                                                             \
        FX_CALL_REAL(__VA_ARGS__);                                                                               \
        fx_launch_exit(&g_ops, s_, r_ == FX_OK);                                                                 \
        return r_;                                                                                               \
    } while (0)

/* An allocation of `bytes` within the pod's cap; `out` receives the pointer or handle, its key in the account. */
#define ALLOCATE(name, out, bytes, ...)                                                                          \
    do {                                                                                                         \
        FX_REAL_OR_PASS(name, __VA_ARGS__);                                                                      \
        uint64_t n_ = (uint64_t)(bytes);                                                                         \
        if (fx_mem_reserve(n_) != 0)                                                                             \
            return FX_NO_MEMORY;                                                                                 \
        FX_CALL_REAL(__VA_ARGS__);                                                                               \
        if (r_ == FX_OK && (out) && *(out))                                                                      \
            fx_mem_commit((uint64_t)(uintptr_t)(*(out)), n_);                                                    \
        else                                                                                                     \
            fx_mem_unreserve(n_);                                                                                \
        return r_;                                                                                               \
    } while (0)

/* A free of `key`: its bytes leave the account when the real free succeeds, and come back when it fails. */
#define RELEASE(name, key, ...)                                                                                  \
    do {                                                                                                         \
        FX_REAL_OR_PASS(name, __VA_ARGS__);                                                                      \
        uint64_t k_ = (uint64_t)(uintptr_t)(key), n_ = fx_mem_forget(k_);                                       \
        FX_CALL_REAL(__VA_ARGS__);                                                                               \
        if (r_ == FX_OK)                                                                                         \
            fx_mem_unreserve(n_);                                                                                \
        else if (n_)                                                                                             \
            fx_mem_commit(k_, n_);                                                                               \
        return r_;                                                                                               \
    } while (0)

/* An application synchronise (device-wide when `idle`): then the core collects what completed. */
#define SYNCED(name, idle, ...)                                                                                  \
    do {                                                                                                         \
        FX_REAL_OR_PASS(name, __VA_ARGS__);                                                                      \
        fx_sync_enter(&g_ops);                                                                                   \
        FX_CALL_REAL(__VA_ARGS__);                                                                               \
        fx_harvest(&g_ops, (idle));                                                                              \
        return r_;                                                                                               \
    } while (0)

/* A memory-info answer as the pod sees it (its cap, its own usage), when the real call succeeded. */
static inline fx_result fx_mem_viewed(fx_result r, size_t *free_bytes, size_t *total)
{
    if (r == FX_OK)
        fx_mem_view(free_bytes, total);
    return r;
}

/* An event pair's elapsed milliseconds as the core's nanoseconds; -1 for a value no device reports. */
static inline int fx_ms_to_ns(float ms, uint64_t *ns)
{
    if (!(ms >= 0.0f) || ms > 1e9f)
        return -1;
    *ns = (uint64_t)((double)ms * 1e6);
    return 0;
}

/* In a helper of the core: `f`, a `type *` to the function `name` of g_libraries, resolved once. */
#define HELPER(type, name)                                                                                       \
    static type *_Atomic fn_;                                                                                    \
    type *f = atomic_load_explicit(&fn_, memory_order_relaxed);                                                  \
    if (!f)                                                                                                      \
        atomic_store(&fn_, f = (type *)fx_resolve(name, g_libraries))

#endif
