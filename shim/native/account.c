/* libflexnpu core, memory: the pod-wide account in the registration slot, this process's entry in the slot's
 * ledger, and this process's pointer -> size table.
 *
 * The cap holds across every process and thread of the pod: an allocation first adds its size to the slot's
 * mem_used_bytes with one atomic fetch-add and undoes it when the sum passed the cap, so the bytes the real
 * allocator hands out never pass the cap (concurrent reservations near the cap can refuse spuriously, never
 * admit too much). Frees give no size in AscendCL or CUDA, so each process remembers its own allocations in an
 * open-addressing table (mmap-backed, under a mutex: allocation is not the launch fast path).
 *
 * A process that ends without freeing (a crash, a kill, or simply exit: frameworks leave their pools to the
 * driver) gives its memory back to the device but not to the account. So each process also keeps what it holds
 * in its own ledger entry of the slot (flexnpu_shm.h), owned through an open-file-description lock on the slot
 * file that the kernel drops with the process. The first allocation (or memory query) of a process takes a free
 * entry and moves the bytes of every dead process's entry out of the account; an allocation that would pass the
 * cap does that once more before it is refused. The order of the two counts (the account first, the entry second
 * on the way in, the reverse on the way out) means a process killed between them leaves too much counted, never
 * too little.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* ---- the ledger ------------------------------------------------------------------------------------------ */

static pthread_mutex_t g_ledger_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_ledger_fd = -1;        /* this process's own open file description of the slot file */
static int g_entry = -1;            /* the ledger entry it owns */
static int g_ledger_tried;          /* attach ran (in this process: a fork's child starts again) */
static _Atomic uint64_t g_own_bytes; /* what this process holds by its own count (the entry's, unless lost) */
static int g_log_no_entry, g_log_no_lock, g_log_lost;

static void sub_clamped(_Atomic uint64_t *word, uint64_t bytes)
{
    /* never below zero, whatever another process wrote into the slot */
    uint64_t v = atomic_load(word);
    uint64_t next;
    do {
        next = v > bytes ? v - bytes : 0;
    } while (!atomic_compare_exchange_weak(word, &v, next));
}

#ifdef F_OFD_SETLK
static int lock_entry(int fd, unsigned i, short type)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)FX_LEDGER_LOCK_BASE + (off_t)i;
    fl.l_len = 1;
    return fcntl(fd, F_OFD_SETLK, &fl);
}
#else
static int lock_entry(int fd, unsigned i, short type)
{
    (void)fd, (void)i, (void)type;
    return -1;
}
#endif

/* Entry i, whose lock the caller holds and whose owner is gone: its bytes leave the account. */
static uint64_t take_leftover(struct fx_slot *slot, unsigned i)
{
    uint64_t left = atomic_exchange(&slot->ledger[i].bytes, 0);
    atomic_store(&slot->ledger[i].pid, 0);
    if (left) {
        sub_clamped(&slot->mem_used_bytes, left);
        atomic_fetch_add(&slot->reclaimed_bytes, left);
    }
    return left;
}

/* Every dead process's entry given back (the caller holds g_ledger_lock); the bytes moved. */
static uint64_t sweep_locked(struct fx_slot *slot)
{
    uint64_t moved = 0;
    if (g_ledger_fd < 0)
        return 0;
    for (unsigned i = 0; i < FX_LEDGER_ENTRIES; i++) {
        if ((int)i == g_entry || atomic_load_explicit(&slot->ledger[i].bytes, memory_order_relaxed) == 0)
            continue;
        if (lock_entry(g_ledger_fd, i, F_WRLCK) != 0)
            continue; /* its process lives (or another process is sweeping it) */
        moved += take_leftover(slot, i);
        lock_entry(g_ledger_fd, i, F_UNLCK);
    }
    return moved;
}

/* A free entry locked and taken by this process (the caller holds g_ledger_lock); -1 when none is free. */
static int claim_locked(struct fx_slot *slot)
{
    for (unsigned i = 0; i < FX_LEDGER_ENTRIES; i++) {
        if (lock_entry(g_ledger_fd, i, F_WRLCK) != 0)
            continue;
        take_leftover(slot, i);
        atomic_store(&slot->ledger[i].pid, (uint32_t)getpid());
        return (int)i;
    }
    return -1;
}

/* This process's own description of the mapped slot file: a reopen of the mapping's descriptor (a description of
 * its own, so that a fork's child never shares the parent's locks), checked to be the file mapped. */
static int open_own(void)
{
    dev_t dev;
    ino_t ino;
    int slot_fd = fx_slot_file_for_account(&dev, &ino);
    if (slot_fd < 0)
        return -1;
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", slot_fd);
    int fd = open(proc, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && (fstat(fd, &st) != 0 || st.st_dev != dev || st.st_ino != ino)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* The descriptor still names the slot file (an application may close descriptors it did not open). */
static int own_is_intact(void)
{
    dev_t dev;
    ino_t ino;
    struct stat st;
    return fx_slot_file_for_account(&dev, &ino) >= 0 && fstat(g_ledger_fd, &st) == 0 && st.st_dev == dev &&
           st.st_ino == ino;
}

/* This process's ledger entry (taken at the first call, which also sweeps), or NULL: then this process's bytes
 * are counted in the account alone, as an older libflexnpu counts them. */
static struct fx_ledger_entry *own_entry(struct fx_slot *slot)
{
    pthread_mutex_lock(&g_ledger_lock);
    if (!g_ledger_tried) {
        g_ledger_tried = 1;
        g_ledger_fd = open_own();
        if (g_ledger_fd < 0) {
            fx_log_once(&g_log_no_lock, "memory ledger: the slot file cannot be reopened: a process that ends "
                                        "without freeing leaves its memory counted");
        } else if ((g_entry = claim_locked(slot)) < 0) {
            fx_log_once(&g_log_no_entry, "memory ledger: all entries are taken by live processes: this process's "
                                         "memory stays counted if it ends without freeing");
        }
        sweep_locked(slot);
    } else if (g_entry >= 0 && !own_is_intact()) {
        /* The application closed our descriptor, so the kernel dropped our lock: another process may have
         * given our bytes back already. Count them again in a fresh entry (too much for a moment, never too
         * little). */
        fx_log_once(&g_log_lost, "memory ledger: the application closed libflexnpu's descriptor of the slot; "
                                 "this process's memory is counted again in a new entry");
        g_ledger_fd = open_own();
        uint64_t mine = atomic_load(&g_own_bytes);
        int old = g_entry;
        g_entry = g_ledger_fd >= 0 ? claim_locked(slot) : -1;
        if (old != g_entry || atomic_load(&slot->ledger[old].bytes) != mine) {
            atomic_fetch_add(&slot->mem_used_bytes, mine);
            if (g_entry >= 0)
                atomic_store(&slot->ledger[g_entry].bytes, mine);
        }
    }
    struct fx_ledger_entry *entry = g_entry >= 0 ? &slot->ledger[g_entry] : NULL;
    pthread_mutex_unlock(&g_ledger_lock);
    return entry;
}

static uint64_t sweep(struct fx_slot *slot)
{
    pthread_mutex_lock(&g_ledger_lock);
    uint64_t moved = sweep_locked(slot);
    pthread_mutex_unlock(&g_ledger_lock);
    return moved;
}

/* ---- the account ----------------------------------------------------------------------------------------- */

static int try_reserve(struct fx_slot *slot, uint64_t bytes)
{
    uint64_t before = atomic_fetch_add(&slot->mem_used_bytes, bytes);
    uint64_t after = before + bytes;
    if (after < before || after > atomic_load(&slot->mem_cap_bytes)) {
        atomic_fetch_sub(&slot->mem_used_bytes, bytes);
        return -1;
    }
    raise_peak(slot, after);
    return 0;
}

int fx_mem_reserve(uint64_t bytes)
{
    struct fx_slot *slot = fx_slot_for_account();
    if (!slot)
        return 0;
    struct fx_ledger_entry *mine = own_entry(slot);
    if (try_reserve(slot, bytes) != 0 && (sweep(slot) == 0 || try_reserve(slot, bytes) != 0)) {
        atomic_fetch_add_explicit(&slot->denied_allocs, 1, memory_order_relaxed);
        return -1;
    }
    if (mine)
        atomic_fetch_add(&mine->bytes, bytes);
    atomic_fetch_add(&g_own_bytes, bytes);
    return 0;
}

void fx_mem_unreserve(uint64_t bytes)
{
    struct fx_slot *slot = fx_slot_for_account();
    if (!slot || !bytes)
        return;
    pthread_mutex_lock(&g_ledger_lock);
    if (g_entry >= 0)
        sub_clamped(&slot->ledger[g_entry].bytes, bytes);
    pthread_mutex_unlock(&g_ledger_lock);
    sub_clamped(&g_own_bytes, bytes);
    sub_clamped(&slot->mem_used_bytes, bytes);
}

void fx_mem_view(size_t *free_bytes, size_t *total_bytes)
{
    struct fx_slot *slot = fx_slot_for_account();
    if (!slot || !free_bytes || !total_bytes)
        return;
    (void)own_entry(slot); /* a process's first look at memory gives dead processes' bytes back first */
    uint64_t cap = atomic_load(&slot->mem_cap_bytes), used = atomic_load(&slot->mem_used_bytes);
    uint64_t left = used < cap ? cap - used : 0;
    if (*total_bytes > cap)
        *total_bytes = (size_t)cap;
    if (*free_bytes > left)
        *free_bytes = (size_t)left;
}

/* fork: the locks must not be held by a thread that does not exist in the child. The child keeps the parent's
 * table: device allocations of the parent are not the child's, so the child forgets them, and it gives up the
 * parent's description of the slot file (closing it leaves the parent's entry lock with the parent) to take an
 * entry of its own at its first allocation. */
void fx_mem_atfork_prepare(void)
{
    pthread_mutex_lock(&g_ledger_lock);
    pthread_mutex_lock(&g_table_lock);
}
void fx_mem_atfork_parent(void)
{
    pthread_mutex_unlock(&g_table_lock);
    pthread_mutex_unlock(&g_ledger_lock);
}
void fx_mem_atfork_child(void)
{
    if (g_table)
        memset(g_table, 0, g_table_size * sizeof *g_table);
    g_table_used = 0;
    if (g_ledger_fd >= 0)
        close(g_ledger_fd);
    g_ledger_fd = -1;
    g_entry = -1;
    g_ledger_tried = 0;
    atomic_store(&g_own_bytes, 0);
    pthread_mutex_unlock(&g_table_lock);
    pthread_mutex_unlock(&g_ledger_lock);
}
