/* libflexnpu: real-symbol resolution shared by the ABI files (see real.c). */
#ifndef FLEXNPU_REAL_H
#define FLEXNPU_REAL_H

#include <stdatomic.h>
#include <stddef.h>

/* One ABI's intercepted names, our wrapper for each, and the real function once found. */
struct fx_symbols {
    size_t count;
    const char *const *names;
    void *const *wrappers;
    void *_Atomic *real;
    const char *const *libraries; /* sonames to ask when RTLD_NEXT does not see the library */
};

void *fx_real_dlsym(void *handle, const char *name);
void *fx_resolve(const char *name, const char *const *libraries);
void *fx_real(struct fx_symbols *table, size_t index);
/* The real function once resolved (one atomic load), else resolve it now. */
static inline void *fx_real_fast(struct fx_symbols *table, size_t index)
{
    void *p = atomic_load_explicit(&table->real[index], memory_order_acquire);
    return p ? p : fx_real(table, index);
}
void fx_resolve_all(struct fx_symbols *table);
struct fx_symbols *fx_acl_symbols(void);
struct fx_symbols *fx_cuda_symbols(void);

#endif
