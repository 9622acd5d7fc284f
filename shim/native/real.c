/* libflexnpu: finding the real functions, and keeping dlsym from handing out ungated ones.
 *
 * Real symbols are resolved with dlsym(RTLD_NEXT) (the libraries after the preloaded interposer); when the
 * library was dlopen'ed with RTLD_LOCAL (the CUDA runtime opens libcuda.so.1 that way) RTLD_NEXT cannot see it,
 * so the fallback asks the already loaded library by name (dlopen RTLD_NOLOAD).
 *
 * dlsym itself is interposed: dlsym(handle, "aclrtMalloc") on a handle of libascendcl.so (or RTLD_DEFAULT) would
 * otherwise return the real function and skip the gate; torch_npu and the CUDA runtime both look entry points up
 * that way. For an intercepted name that the real lookup finds, our wrapper is returned. RTLD_NEXT depends on the
 * caller, so it is answered by walking the link map from the caller's object on (the preloaded interposer comes
 * right after the executable, so the executable's RTLD_NEXT finds the wrapper, as the loader would).
 */
#define _GNU_SOURCE
#include "real.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "gate.h"

/* dlsym runs inside a sanitizer runtime's own start-up (it resolves its interceptors with RTLD_NEXT before its
 * shadow memory exists): the lookup path is never instrumented. */
#define NO_SANITIZE __attribute__((no_sanitize("address", "undefined")))

typedef void *(*dlsym_fn)(void *, const char *);
static dlsym_fn g_real_dlsym;
static pthread_once_t g_dlsym_once = PTHREAD_ONCE_INIT;

NO_SANITIZE static void find_real_dlsym(void)
{
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.17", "GLIBC_2.2.5", "GLIBC_2.0"};
    for (size_t i = 0; i < sizeof versions / sizeof *versions && !g_real_dlsym; i++)
        g_real_dlsym = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
}

NO_SANITIZE void *fx_real_dlsym(void *handle, const char *name)
{
    pthread_once(&g_dlsym_once, find_real_dlsym);
    return g_real_dlsym ? g_real_dlsym(handle, name) : NULL;
}

void *fx_resolve(const char *name, const char *const *libraries)
{
    void *p = fx_real_dlsym(RTLD_NEXT, name);
    for (size_t i = 0; !p && libraries && libraries[i]; i++) {
        void *h = dlopen(libraries[i], RTLD_LAZY | RTLD_NOLOAD);
        if (h) {
            p = fx_real_dlsym(h, name);
            dlclose(h);
        }
    }
    return p;
}

void *fx_real(struct fx_symbols *table, size_t index)
{
    void *p = atomic_load_explicit(&table->real[index], memory_order_acquire);
    if (p)
        return p;
    p = fx_resolve(table->names[index], table->libraries);
    if (p)
        atomic_store_explicit(&table->real[index], p, memory_order_release);
    return p;
}

void fx_resolve_all(struct fx_symbols *table)
{
    for (size_t i = 0; i < table->count; i++)
        (void)fx_real(table, i);
}

static int same(const char *a, const char *b);

NO_SANITIZE static void *wrapper_for(const char *name, void *real_found)
{
    struct fx_symbols *tables[] = {fx_acl_symbols(), fx_cuda_symbols()};
    for (size_t t = 0; t < sizeof tables / sizeof *tables; t++) {
        struct fx_symbols *table = tables[t];
        for (size_t i = 0; i < table->count; i++) {
            if (!same(table->names[i], name))
                continue;
            if (real_found == table->wrappers[i])
                return real_found; /* the lookup found our own export (RTLD_DEFAULT, a handle of libflexnpu) */
            void *expected = NULL;
            atomic_compare_exchange_strong(&table->real[i], &expected, real_found);
            return table->wrappers[i];
        }
    }
    return real_found;
}

NO_SANITIZE static struct link_map *object_of(const void *address)
{
    Dl_info info;
    struct link_map *map = NULL;
    if (!dladdr1(address, &info, (void **)&map, RTLD_DL_LINKMAP))
        return NULL;
    return map;
}

/* strcmp without libc: a sanitizer intercepts strcmp and its interceptor is not ready while it resolves them. */
NO_SANITIZE static int same(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

/* Our own export of name (an intercepted entry point), or NULL. */
NO_SANITIZE static void *own_export(const char *name)
{
    struct fx_symbols *tables[] = {fx_acl_symbols(), fx_cuda_symbols()};
    for (size_t t = 0; t < sizeof tables / sizeof *tables; t++)
        for (size_t i = 0; i < tables[t]->count; i++)
            if (same(tables[t]->names[i], name))
                return tables[t]->wrappers[i];
    return same(name, "dlsym") ? (void *)dlsym : NULL;
}

/* RTLD_NEXT for caller: the first definition of name in the objects loaded after the caller's. A caller loaded
 * before libflexnpu (the executable, a sanitizer runtime) finds our export, else what follows us; a caller loaded
 * after us gets a walk of the objects after it (so a later wrapper library never finds itself again). */
NO_SANITIZE static void *next_after(const void *caller, const char *name)
{
    struct link_map *map = object_of(caller), *self = object_of((const void *)own_export);
    int before_us = 0;
    for (struct link_map *l = map ? map->l_next : NULL; l && !before_us; l = l->l_next)
        before_us = l == self;
    if (!map || map == self || before_us) {
        void *own = map == self ? NULL : own_export(name);
        return own ? own : fx_real_dlsym(RTLD_NEXT, name);
    }
    for (struct link_map *l = map->l_next; l; l = l->l_next) {
        if (!l->l_name || !l->l_name[0])
            continue;
        void *h = dlopen(l->l_name, RTLD_LAZY | RTLD_NOLOAD);
        if (!h)
            continue;
        void *p = fx_real_dlsym(h, name);
        dlclose(h);
        if (p && object_of(p) == l)
            return p;
    }
    return NULL;
}

NO_SANITIZE FX_EXPORT void *dlsym(void *handle, const char *name)
{
    if (handle == RTLD_NEXT)
        return next_after(__builtin_return_address(0), name);
    void *p = fx_real_dlsym(handle, name);
    if (!p)
        return p;
    return wrapper_for(name, p);
}
