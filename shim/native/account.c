/* libflexnpu core, memory: the pod-wide account in the registration slot and this process's pointer -> size table.
 *
 * The cap holds across every process and thread of the pod: an allocation first adds its size to the slot's
 * mem_used_bytes with one atomic fetch-add and undoes it when the sum passed the cap, so the bytes the real
 * allocator hands out never pass the cap (concurrent reservations near the cap can refuse spuriously, never
 * admit too much). Frees give no size in AscendCL or CUDA, so each process remembers its own allocations in an
 * open-addressing table (mmap-backed, under a mutex: allocation is not the launch fast path).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>

#include "flexnpu_shm.h"
#include "gate.h"

struct fx_entry {
    uint64_t key;   /* 0 empty, UINT64_MAX deleted */
    uint64_t bytes;
};

static pthread_mutex_t g_table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fx_entry *g_table;
static size_t g_table_size; /* power of two */
static size_t g_table_used; /* live + deleted */

#define FX_DELETED UINT64_MAX

static size_t probe(uint64_t key, size_t size) { return (size_t)((key >> 4) * 0x9E3779B97F4A7C15ull) & (size - 1); }

static void table_insert(struct fx_entry *table, size_t size, uint64_t key, uint64_t bytes)
{
    for (size_t i = probe(key, size);; i = (i + 1) & (size - 1)) {
        if (table[i].key == 0 || table[i].key == FX_DELETED || table[i].key == key) {
            table[i].key = key;
            table[i].bytes = bytes;
            return;
        }
    }
}

static int table_grow(void)
{
    size_t size = g_table_size ? g_table_size * 2 : 4096;
    struct fx_entry *table = mmap(NULL, size * sizeof *table, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                                  -1, 0);
    if (table == MAP_FAILED)
        return -1;
    size_t live = 0;
    for (size_t i = 0; i < g_table_size; i++) {
        if (g_table[i].key != 0 && g_table[i].key != FX_DELETED) {
            table_insert(table, size, g_table[i].key, g_table[i].bytes);
            live++;
        }
    }
    if (g_table)
        munmap(g_table, g_table_size * sizeof *g_table);
    g_table = table;
    g_table_size = size;
    g_table_used = live;
    return 0;
}

void fx_mem_commit(uint64_t key, uint64_t bytes)
{
    if (key == 0 || key == FX_DELETED || !fx_slot_for_account())
        return;
    pthread_mutex_lock(&g_table_lock);
    if ((g_table_used + 1) * 2 > g_table_size && table_grow() != 0) {
        pthread_mutex_unlock(&g_table_lock);
        return; /* no room to remember it: the bytes stay counted (conservative) */
    }
    for (size_t i = probe(key, g_table_size);; i = (i + 1) & (g_table_size - 1)) {
        if (g_table[i].key == key) {
            g_table[i].bytes += bytes;
            break;
        }
        if (g_table[i].key == 0) {
            g_table[i].key = key;
            g_table[i].bytes = bytes;
            g_table_used++;
            break;
        }
    }
    pthread_mutex_unlock(&g_table_lock);
}

uint64_t fx_mem_forget(uint64_t key)
{
    uint64_t bytes = 0;
    if (key == 0 || key == FX_DELETED)
        return 0;
    pthread_mutex_lock(&g_table_lock);
    for (size_t i = g_table_size ? probe(key, g_table_size) : 0; g_table_size; i = (i + 1) & (g_table_size - 1)) {
        if (g_table[i].key == 0)
            break;
        if (g_table[i].key == key) {
            bytes = g_table[i].bytes;
            g_table[i].key = FX_DELETED;
            break;
        }
    }
    pthread_mutex_unlock(&g_table_lock);
    return bytes;
}

static void raise_peak(struct fx_slot *slot, uint64_t used)
{
    uint64_t peak = atomic_load_explicit(&slot->mem_peak_bytes, memory_order_relaxed);
    while (used > peak && !atomic_compare_exchange_weak(&slot->mem_peak_bytes, &peak, used)) {
    }
}

int fx_mem_reserve(uint64_t bytes)
{
    struct fx_slot *slot = fx_slot_for_account();
    if (!slot)
        return 0;
    uint64_t before = atomic_fetch_add(&slot->mem_used_bytes, bytes);
    uint64_t after = before + bytes;
    if (after < before || after > atomic_load(&slot->mem_cap_bytes)) {
        atomic_fetch_sub(&slot->mem_used_bytes, bytes);
        atomic_fetch_add_explicit(&slot->denied_allocs, 1, memory_order_relaxed);
        return -1;
    }
    raise_peak(slot, after);
    return 0;
}

void fx_mem_unreserve(uint64_t bytes)
{
    struct fx_slot *slot = fx_slot_for_account();
    if (!slot || !bytes)
        return;
    /* never below zero, whatever another process wrote into the slot */
    uint64_t used = atomic_load(&slot->mem_used_bytes);
    uint64_t next;
    do {
        next = used > bytes ? used - bytes : 0;
    } while (!atomic_compare_exchange_weak(&slot->mem_used_bytes, &used, next));
}

void fx_mem_view(size_t *free_bytes, size_t *total_bytes)
{
    struct fx_slot *slot = fx_slot_for_account();
    if (!slot || !free_bytes || !total_bytes)
        return;
    uint64_t cap = atomic_load(&slot->mem_cap_bytes), used = atomic_load(&slot->mem_used_bytes);
    uint64_t left = used < cap ? cap - used : 0;
    if (*total_bytes > cap)
        *total_bytes = (size_t)cap;
    if (*free_bytes > left)
        *free_bytes = (size_t)left;
}

/* fork: the table lock must not be held by a thread that does not exist in the child. The child keeps the
 * parent's table: device allocations of the parent are not the child's, so the child forgets them. */
void fx_mem_atfork_prepare(void) { pthread_mutex_lock(&g_table_lock); }
void fx_mem_atfork_parent(void) { pthread_mutex_unlock(&g_table_lock); }
void fx_mem_atfork_child(void)
{
    if (g_table)
        memset(g_table, 0, g_table_size * sizeof *g_table);
    g_table_used = 0;
    pthread_mutex_unlock(&g_table_lock);
}
