/* libflexnpu core: maps the pod's registration slot and its card's grant region, gates launches, caps in-flight
 * device time, keeps the pod-wide memory account. Knows no ABI (see gate.h).
 *
 * Configuration, read once at load (a later unsetenv changes nothing; no variable switches enforcement off):
 *   FLEXNPU_SHIM_DIR     shim directory (default /var/run/flexnpu, the directory the device plugin mounts)
 *   FLEXNPU_ID           registration id -> slot-<id>.shm; when unset, the only slot-*.shm in the directory
 *   FLEXNPU_INFLIGHT_US  device time a process may queue ahead of the device (default 2000)
 *   FLEXNPU_EVENT_EVERY  launches per timing interval (one start and one end event; default 8: an event
 *                        record costs the host about a microsecond on real devices, 8 launches amortise it)
 *   FLEXNPU_SLICE_US     local pacing burst when no daemon is there (default 10000)
 *   FLEXNPU_YIELD_MIN_US an idle holder gives its grant back only when at least this much of it is left (default
 *                        300: less is gone before flexnpud could hand the card on; 10000000 never yields)
 *   FLEXNPU_HANDOFF_SPIN_US the successor published ahead wakes this long before its grant begins and spins to
 *                        it (default 50; 0: sleeps to the moment itself)
 *   FLEXNPU_RENEW_US     a launch this close to the grant's deadline sets want=1 already (default 1000; 0 off):
 *                        flexnpud decides at the deadline whether the holder still wants the card, and a busy
 *                        holder is then usually in the middle of its work, not yet asking. A holder that waits for
 *                        its own work at the in-flight cap sets it too (its next launch is ready), whatever this is
 * An early want rings no doorbell (flexnpud reads it when it decides at the renewal or the deadline); a process
 * that then waits for the card rings once.
 * Yield: at an application sync (fx_harvest) a holder process with nothing in flight that launched in the current
 * grant gives it back while the card region says another tenant waits (contended): yield_ns, yield_epoch, then a
 * ring of the slot's doorbell; no process of the pod launches on that epoch again (granted_at() reads yield_epoch).
 * Figures: each wait that ends in a grant adds its hand-off (card.ended_ns -> gate open) or, on a free card, its
 * acquire time (want -> gate open) to the slot's histograms.
 * Preemptor: the registration flexnpud names in card.preempt launches while its want is 1, whoever holds the card,
 * and every other slot's gate then treats its own grant as revoked (flexnpu_shm.h); its wait ends at its own want,
 * timed as an acquire. The others read its slot's want on each launch (mapped read-only, found by slot_index).
 * Successor: flexnpud may publish the grant that follows the current one ahead of its deadline (card.next_grant);
 * the slot it names waits on seq until that deadline only (FUTEX_WAIT_BITSET, absolute time, 1 ns of timer slack)
 * and launches from there, the daemon's reaction out of the hand-off.
 * Timing: device time is the sum of event-timed intervals (a start and an end event per FLEXNPU_EVENT_EVERY launches
 * of one thread on one stream). An interval ends before each application synchronise (fx_sync_enter: its end event
 * queued behind its launches, not stamped when the synchronise returns) or when the launches change stream. The
 * first interval after a wait for the card is split by a mid event after its first launch: its stream was idle,
 * so its start event is stamped at once while the card may still run the previous holder's last kernels; the
 * launches after mid are timed exactly and the first counts at most twice the learned per-launch estimate; what
 * that leaves out goes to the slot's excluded_ns, which flexnpud excuses only as far as it measured the tails of the
 * holders before (a pod's own long first kernel is charged all the same).
 * Modes: a slot and a card region -> GRANTED; a slot only (no daemon) -> LOCAL pacing at share_permille;
 * no slot -> UNGATED (this is a process outside any registration), logged once to stderr.
 */
#define _GNU_SOURCE
#include "gate.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "flexnpu_shm.h"

#define FX_RING 16u               /* timing intervals in flight per thread and ABI */
#define FX_DEAD_DAEMON_NS 2000000000ull /* no grant change for this long while waiting: pace locally */
#define FX_FUTEX_WAIT_NS 50000000ll
#define FX_PROBE_NS 1000000000ull /* local mode: look for the daemon's region this often */

/* ---- state ---------------------------------------------------------------------------------------------- */

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static _Atomic int g_mode = FX_UNGATED;
static struct fx_slot *g_slot;
static struct fx_card_region *_Atomic g_card;
static char g_dir[512];
/* the mapped slot's file, kept open (close-on-exec), and its identity: account.c's ledger reopens it to lock its
 * entry, and checks that what it locks is the file mapped */
static int g_slot_fd = -1;
static dev_t g_slot_dev;
static ino_t g_slot_ino;
static uint64_t g_inflight_cap_ns = 2000000;
static uint32_t g_event_every = 8;
static uint64_t g_burst_ns = 10000000;
static uint64_t g_renew_ns = 1000000;
static uint64_t g_yield_min_ns = 300000;
static uint64_t g_spin_ns = 50000;
static _Atomic uint64_t g_inflight_launches; /* process-wide launches whose completion is not yet observed */
static _Atomic int g_fresh_grant; /* the process waited for a grant and has not opened a timing interval since */
static _Atomic uint64_t g_est_launch_ns; /* learned device time per launch (EWMA of event timings) */
static _Atomic uint64_t g_used_ns;           /* this process's measured device time (local pacing) */
static _Atomic uint64_t g_pace_t0;
static _Atomic uint64_t g_next_probe;
static _Atomic uint32_t g_dead_seq = UINT32_MAX; /* seq value at which the daemon was declared gone */
static _Atomic int g_dead;
static _Atomic int g_early_want; /* want=1 was set by a launch near the deadline, not by a waiting thread */
/* The epoch of this thread's last launch through the gate, plus 1 (0: none). */
static __thread uint32_t t_epoch __attribute__((tls_model("initial-exec")));
/* 1 when this thread's last launch went through as the card's preemptor, before a grant of its own: its work is
 * then that of the grant flexnpud hands it for that want, which its next synchronise may give back. */
static __thread int t_preempt __attribute__((tls_model("initial-exec")));
static pthread_key_t g_thread_key;
static int g_log_ungated, g_log_local, g_log_dead;
/* The preemptor's slot (flexnpu_shm.h), mapped read-only once its index is named: its key (index + 1) and mapping
 * (NULL: no such slot), published together through one pointer, so that a reader never pairs one with another's. */
struct fx_preemptor {
    uint32_t key;
    const struct fx_slot *slot;
};
static struct fx_preemptor *_Atomic g_pre;

struct fx_interval {
    void *start, *end, *stream;
    void *mid;      /* split intervals: recorded after the first launch */
    uint32_t launches;
    int state; /* 0 free, 1 open (start recorded), 2 closed (end recorded) */
    int split; /* 0 no; 1 the first launch after a hand-off comes next: mid goes after it; 2 mid recorded */
};

struct fx_timing {
    struct fx_interval ring[FX_RING];
    uint32_t head, count;   /* closed intervals, oldest at head */
    struct fx_interval open;
};

struct fx_thread {
    struct fx_timing abi[FX_ABI_COUNT];
};

__thread int fx_depth __attribute__((tls_model("initial-exec")));
static __thread struct fx_thread *t_state __attribute__((tls_model("initial-exec")));
static __thread const struct fx_ops *t_ops[FX_ABI_COUNT] __attribute__((tls_model("initial-exec")));

/* ---- small helpers -------------------------------------------------------------------------------------- */

uint64_t fx_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void fx_log_once(int *flag, const char *message)
{
    if (__atomic_exchange_n(flag, 1, __ATOMIC_RELAXED))
        return;
    int saved = errno;
    char line[600];
    int n = snprintf(line, sizeof line, "flexnpu[%d]: %s\n", (int)getpid(), message);
    if (n > 0)
        (void)!write(2, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
    errno = saved;
}

static uint64_t env_u64(const char *name, uint64_t fallback, uint64_t lo, uint64_t hi)
{
    const char *text = getenv(name);
    if (!text || !*text)
        return fallback;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return fallback;
    return v;
}

static void futex_wake(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
}

static void futex_wait(_Atomic uint32_t *word, uint32_t expected, long long timeout_ns)
{
    struct timespec ts = {timeout_ns / 1000000000ll, timeout_ns % 1000000000ll};
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, &ts, NULL, 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Wait on a futex word until the CLOCK_MONOTONIC time at_ns (or a change of the word): asleep until g_spin_ns before
 * it, with this thread's timer slack at 1 ns meanwhile (the default 50 us of slack would be the hand-off's delay),
 * then spinning to it, so that a wake-up a little late still launches on time. */
static void wait_until(_Atomic uint32_t *word, uint32_t expected, uint64_t at_ns)
{
    if (at_ns > fx_now_ns() + g_spin_ns) {
        int slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
        if (slack > 1)
            prctl(PR_SET_TIMERSLACK, 1ul, 0, 0, 0);
        uint64_t wake = at_ns - g_spin_ns;
        struct timespec ts = {(time_t)(wake / 1000000000ull), (long)(wake % 1000000000ull)};
        /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time */
        syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET, expected, &ts, NULL, FUTEX_BITSET_MATCH_ANY);
        if (slack > 1)
            prctl(PR_SET_TIMERSLACK, (unsigned long)slack, 0, 0, 0);
    }
    uint64_t now = fx_now_ns();
    while (now < at_ns && now + g_spin_ns >= at_ns &&
           atomic_load_explicit(word, memory_order_acquire) == expected) {
        cpu_relax();
        now = fx_now_ns();
    }
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- mapping -------------------------------------------------------------------------------------------- */

/* slot-<id>.shm: the id as is when it is 1..128 of [A-Za-z0-9._-] and does not start with '.', else
 * "h" + 16 hex digits of its FNV-1a 64 hash (shm.py's slot_name does the same). */
static void slot_name(const char *id, char *out, size_t size)
{
    size_t n = strlen(id);
    int ok = n > 0 && n <= FX_ID_MAX && id[0] != '.';
    for (size_t i = 0; ok && i < n; i++) {
        char c = id[i];
        ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
             c == '_' || c == '-';
    }
    if (ok) {
        snprintf(out, size, "slot-%s.shm", id);
        return;
    }
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)id[i]) * 0x100000001b3ull;
    snprintf(out, size, "slot-h%016llx.shm", (unsigned long long)h);
}

/* keep_fd: where to leave the open descriptor of a mapped file (else it is closed) */
static void *map_file(const char *path, int writable, int *keep_fd)
{
    int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return NULL;
    struct stat st;
    void *p = MAP_FAILED;
    if (fstat(fd, &st) == 0 && st.st_size >= (off_t)FX_SHM_SIZE)
        p = mmap(NULL, FX_SHM_SIZE, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
    if (keep_fd && p != MAP_FAILED)
        *keep_fd = fd;
    else
        close(fd);
    return p == MAP_FAILED ? NULL : p;
}

/* A registration slot's file name: slot-<something>.shm. */
static int is_slot_name(const char *name)
{
    size_t n = strlen(name);
    return n > 9 && strncmp(name, "slot-", 5) == 0 && strcmp(name + n - 4, ".shm") == 0;
}

static int find_only_slot(char *out, size_t size)
{
    DIR *d = opendir(g_dir);
    if (!d)
        return -1;
    int found = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (is_slot_name(e->d_name)) {
            if (found++ == 0)
                snprintf(out, size, "%s", e->d_name);
        }
    }
    closedir(d);
    return found == 1 ? 0 : -1;
}

static struct fx_slot *map_slot(void)
{
    char name[300], path[900];
    const char *id = getenv("FLEXNPU_ID");
    if (id && *id)
        slot_name(id, name, sizeof name);
    else if (find_only_slot(name, sizeof name) != 0)
        return NULL;
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    int fd = -1;
    struct fx_slot *s = map_file(path, 1, &fd);
    if (s && (atomic_load(&s->magic) != FX_SLOT_MAGIC || atomic_load(&s->version) != FX_SHM_VERSION)) {
        munmap(s, FX_SHM_SIZE);
        close(fd);
        return NULL;
    }
    struct stat st;
    if (s && fstat(fd, &st) == 0) {
        g_slot_fd = fd;
        g_slot_dev = st.st_dev;
        g_slot_ino = st.st_ino;
    } else if (s) {
        close(fd); /* mapped all the same; the ledger then stays off in this process */
    }
    return s;
}

static struct fx_card_region *map_card(void)
{
    char path[800];
    snprintf(path, sizeof path, "%s/card-%u.grant", g_dir, (unsigned)atomic_load(&g_slot->card_index));
    struct fx_card_region *c = map_file(path, 0, NULL);
    if (c && (atomic_load(&c->magic) != FX_CARD_MAGIC || atomic_load(&c->version) != FX_SHM_VERSION)) {
        munmap(c, FX_SHM_SIZE);
        return NULL;
    }
    return c;
}

/* The slot of this card whose slot_index is `index`, mapped read-only (NULL: none in the directory). Kept for the
 * next lookup of the same index; another index maps again (the old mapping and its record stay, since another
 * thread may be reading them: 4 KiB per preemptor named, a handful over a pod's life). */
static __attribute__((noinline)) const struct fx_slot *preemptor_slot(uint32_t index)
{
    struct fx_preemptor *known = atomic_load_explicit(&g_pre, memory_order_acquire);
    if (known && known->key == index + 1u)
        return known->slot; /* another thread looked it up meanwhile */
    const struct fx_slot *found = NULL;
    DIR *d = opendir(g_dir);
    struct dirent *e;
    uint32_t card = atomic_load_explicit(&g_slot->card_index, memory_order_relaxed);
    while (d && !found && (e = readdir(d)) != NULL) {
        if (!is_slot_name(e->d_name))
            continue;
        char path[900];
        snprintf(path, sizeof path, "%s/%s", g_dir, e->d_name);
        struct fx_slot *s = map_file(path, 0, NULL);
        if (s && atomic_load(&s->magic) == FX_SLOT_MAGIC && atomic_load(&s->version) == FX_SHM_VERSION &&
            atomic_load(&s->slot_index) == index && atomic_load(&s->card_index) == card)
            found = s;
        else if (s)
            munmap(s, FX_SHM_SIZE);
    }
    if (d)
        closedir(d);
    struct fx_preemptor *record = malloc(sizeof *record);
    if (record) {
        record->key = index + 1u;
        record->slot = found;
        atomic_store_explicit(&g_pre, record, memory_order_release);
    }
    return found;
}

/* ---- threads and fork ----------------------------------------------------------------------------------- */

static void timing_drain(const struct fx_ops *ops, struct fx_timing *t, int block);

static void thread_exit(void *arg)
{
    struct fx_thread *st = arg;
    for (int a = 0; a < FX_ABI_COUNT; a++) {
        const struct fx_ops *ops = t_ops[a];
        struct fx_timing *t = &st->abi[a];
        if (!ops)
            continue;
        timing_drain(ops, t, 1);
        for (uint32_t i = 0; i < FX_RING; i++) {
            if (t->ring[i].start)
                ops->event_destroy(t->ring[i].start);
            if (t->ring[i].end)
                ops->event_destroy(t->ring[i].end);
            if (t->ring[i].mid)
                ops->event_destroy(t->ring[i].mid);
        }
        if (t->open.start)
            ops->event_destroy(t->open.start);
        if (t->open.end)
            ops->event_destroy(t->open.end);
        if (t->open.mid)
            ops->event_destroy(t->open.mid);
    }
    t_state = NULL;
    munmap(st, sizeof *st);
}

static void fork_child(void)
{
    /* The child has no device work of its own yet and the parent's events are not its own: start clean.
     * The mappings (MAP_SHARED) stay: the child belongs to the same pod. */
    atomic_store(&g_inflight_launches, 0);
    if (t_state)
        memset(t_state, 0, sizeof *t_state);
}

static void fork_prepare_all(void) { fx_mem_atfork_prepare(); }
static void fork_parent_all(void) { fx_mem_atfork_parent(); }
static void fork_child_all(void)
{
    fx_mem_atfork_child();
    fork_child();
}

static struct fx_thread *thread_state(void)
{
    if (t_state)
        return t_state;
    void *p = mmap(NULL, sizeof(struct fx_thread), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    t_state = p;
    pthread_setspecific(g_thread_key, p);
    return t_state;
}

static void report_at_exit(void);

/* ---- init ----------------------------------------------------------------------------------------------- */

static void init_once(void)
{
    int saved = errno;
    const char *dir = getenv("FLEXNPU_SHIM_DIR");
    snprintf(g_dir, sizeof g_dir, "%s", dir && *dir ? dir : "/var/run/flexnpu");
    g_inflight_cap_ns = env_u64("FLEXNPU_INFLIGHT_US", 2000, 10, 10000000) * 1000ull;
    g_event_every = (uint32_t)env_u64("FLEXNPU_EVENT_EVERY", 8, 1, 1024);
    g_burst_ns = env_u64("FLEXNPU_SLICE_US", 10000, 100, 10000000) * 1000ull;
    g_renew_ns = env_u64("FLEXNPU_RENEW_US", 1000, 0, 100000000) * 1000ull;
    g_yield_min_ns = env_u64("FLEXNPU_YIELD_MIN_US", 300, 0, 10000000) * 1000ull;
    g_spin_ns = env_u64("FLEXNPU_HANDOFF_SPIN_US", 50, 0, 1000) * 1000ull;
    /* Until events have measured something, assume a launch is half the cap: little queues ahead unmeasured. */
    atomic_store(&g_est_launch_ns, g_inflight_cap_ns / 2);
    pthread_key_create(&g_thread_key, thread_exit);
    pthread_atfork(fork_prepare_all, fork_parent_all, fork_child_all);
    atexit(report_at_exit);
    g_slot = map_slot();
    if (!g_slot) {
        fx_log_once(&g_log_ungated, "no registration slot in the shim directory: running ungated");
    } else {
        struct fx_card_region *card = map_card();
        atomic_store(&g_card, card);
        atomic_store(&g_pace_t0, fx_now_ns());
        atomic_store(&g_mode, card ? FX_GRANTED : FX_LOCAL);
        if (!card)
            fx_log_once(&g_log_local, "no grant region from flexnpud: pacing locally at the guaranteed share");
    }
    errno = saved;
}

__attribute__((constructor)) static void fx_constructor(void) { fx_init(); }

void fx_init(void) { pthread_once(&g_once, init_once); }

enum fx_mode fx_mode(void)
{
    fx_init();
    return (enum fx_mode)atomic_load_explicit(&g_mode, memory_order_relaxed);
}


/* ---- device-time measurement ---------------------------------------------------------------------------- */

/* ns measured by events over `launches` launches (what the per-launch estimate learns from), plus `extra` ns that
 * the events bound but do not time exactly (a split interval's first launch). */
static void account_ns(uint64_t ns, uint32_t launches, uint64_t extra)
{
    if (launches) {
        uint64_t per = ns / launches, est = atomic_load_explicit(&g_est_launch_ns, memory_order_relaxed);
        atomic_store_explicit(&g_est_launch_ns, est - est / 4 + per / 4 + 1, memory_order_relaxed);
    }
    ns += extra;
    atomic_fetch_add_explicit(&g_used_ns, ns, memory_order_relaxed);
    if (g_slot)
        atomic_fetch_add_explicit(&g_slot->used_ns, ns, memory_order_relaxed);
}

/* Collect the oldest closed interval: 1 when collected, 0 when not complete yet (non-blocking). */
static int collect_oldest(const struct fx_ops *ops, struct fx_timing *t, int block)
{
    struct fx_interval *iv = &t->ring[t->head];
    if (block)
        ops->event_sync(iv->end);
    else if (ops->event_done(iv->end) == 0)
        return 0;
    uint64_t ns = 0, head = 0;
    if (iv->split == 2 && ops->elapsed_ns(iv->start, iv->mid, &head) == 0 &&
        ops->elapsed_ns(iv->mid, iv->end, &ns) == 0) {
        /* [start, mid] is the first launch and whatever the card ran before it (another tenant's last kernels):
         * the first launch counts as much of it as twice the learned per-launch estimate (a mean: capped at it,
         * the launches longer than the mean would go under-reported), never more than the span */
        uint64_t cap = 2 * atomic_load_explicit(&g_est_launch_ns, memory_order_relaxed);
        account_ns(ns, iv->launches - 1, head < cap ? head : cap);
        if (head > cap && g_slot) /* told apart, so that a pod's own long first launch is charged all the same */
            atomic_fetch_add_explicit(&g_slot->excluded_ns, head - cap, memory_order_relaxed);
    } else {
        if (ops->elapsed_ns(iv->start, iv->end, &ns) != 0)
            ns = 0;
        account_ns(ns, iv->launches, 0);
    }
    atomic_fetch_sub_explicit(&g_inflight_launches, iv->launches, memory_order_relaxed);
    iv->state = 0;
    iv->launches = 0;
    iv->split = 0;
    t->head = (t->head + 1) % FX_RING;
    t->count--;
    return 1;
}

static int ensure_events(const struct fx_ops *ops, struct fx_interval *iv)
{
    if (!iv->start && ops->event_create(&iv->start) != 0)
        iv->start = NULL;
    if (!iv->end && ops->event_create(&iv->end) != 0)
        iv->end = NULL;
    return iv->start && iv->end ? 0 : -1;
}

static void close_open(const struct fx_ops *ops, struct fx_timing *t)
{
    struct fx_interval *open = &t->open;
    if (open->state != 1)
        return;
    if (open->launches == 0) { /* nothing launched in it (the launch failed): nothing to time */
        open->state = 0;
        return;
    }
    if (t->count == FX_RING)
        collect_oldest(ops, t, 1);
    uint32_t slot = (t->head + t->count) % FX_RING;
    struct fx_interval *dst = &t->ring[slot];
    if (ops->event_record(open->end, open->stream) != 0) {
        atomic_fetch_sub_explicit(&g_inflight_launches, open->launches, memory_order_relaxed);
        open->state = 0;
        open->launches = 0;
        open->split = 0;
        return;
    }
    /* swap the event pair into the ring; the ring's old (free) pair becomes the next open pair */
    struct fx_interval spare = *dst;
    *dst = *open;
    dst->state = 2;
    open->start = spare.start;
    open->end = spare.end;
    open->mid = spare.mid;
    open->state = 0;
    open->launches = 0;
    open->split = 0;
    t->count++;
}

static void timing_drain(const struct fx_ops *ops, struct fx_timing *t, int block)
{
    close_open(ops, t);
    while (t->count && collect_oldest(ops, t, block)) {
    }
}

static void withdraw_early_want(void);
static void maybe_yield(void);

void fx_sync_enter(const struct fx_ops *ops)
{
    struct fx_thread *st = t_state;
    if (st && fx_mode() != FX_UNGATED)
        close_open(ops, &st->abi[ops->abi]);
}

void fx_harvest(const struct fx_ops *ops, int device_idle)
{
    struct fx_thread *st = t_state;
    if (!st || fx_mode() == FX_UNGATED)
        return;
    struct fx_timing *t = &st->abi[ops->abi];
    /* The application synchronised (the device, or a stream or event): the open interval ends here, whatever was
     * synchronised. Left open, its start event (stamped when recorded) would time the host gap after this sync as
     * device time when a later launch closes it: an over-report the daemon charges. */
    (void)device_idle;
    close_open(ops, t);
    while (t->count && collect_oldest(ops, t, 0)) {
    }
    withdraw_early_want();
    maybe_yield();
}

/* At exit (before the device libraries' destructors run): report this thread's last intervals. */
static void report_at_exit(void)
{
    struct fx_thread *st = t_state;
    for (int a = 0; st && a < FX_ABI_COUNT; a++)
        if (t_ops[a])
            timing_drain(t_ops[a], &st->abi[a], 1);
}

void fx_account_sync_ns(uint64_t ns)
{
    if (fx_mode() != FX_UNGATED)
        account_ns(ns, 0, 0);
}

/* Device time this process has queued and not seen complete, from the learned per-launch estimate. */
static uint64_t inflight_est_ns(void)
{
    return atomic_load_explicit(&g_inflight_launches, memory_order_relaxed) *
           atomic_load_explicit(&g_est_launch_ns, memory_order_relaxed);
}

static void want_early(void);

/* Wait for this thread's oldest work until the process's in-flight estimate plus one more launch fits in
 * budget_ns (or it has nothing left). 1 when it waited (time passed: the caller checks the grant again). A holder
 * that waits here has its next launch ready: it wants the card after this grant too (want_early), or flexnpud,
 * finding it neither wanting nor reporting at the renewal (its first interval is still open behind the former
 * holder's last kernels), took it for idle and handed the card on in the middle of its work. */
static int cap_inflight(const struct fx_ops *ops, struct fx_timing *t, uint64_t left_ns, int high)
{
    int waited = 0;
    for (;;) {
        /* the cap, at least two and a half launches at priority high (see gate()), then the deadline: computed
         * again after each wait, since each collected interval moves the estimate */
        uint64_t est = atomic_load_explicit(&g_est_launch_ns, memory_order_relaxed), budget = g_inflight_cap_ns;
        if (high && 2 * est + est / 2 > budget)
            budget = 2 * est + est / 2;
        if (left_ns < budget)
            budget = left_ns;
        if (inflight_est_ns() + est <= budget)
            break;
        if (!t->count)
            close_open(ops, t);
        if (!t->count)
            return waited;
        want_early();
        if (!collect_oldest(ops, t, 1))
            return waited;
        waited = 1;
    }
    return waited;
}

/* ---- the grant ------------------------------------------------------------------------------------------ */

/* A consistent view of the card region (flexnpu_shm.h's write orders). */
struct fx_view {
    uint64_t grant, deadline, next, next_deadline;
};

#define FX_PUBLISH_SPIN_NS 20000ull /* a write of the region in progress for longer: the daemon was preempted */

/* 0 with a consistent view; -1 when flexnpud has been writing a grant for longer than FX_PUBLISH_SPIN_NS. */
static inline int read_card(const struct fx_card_region *card, struct fx_view *v)
{
    uint64_t since = 0;
    for (;;) {
        uint64_t g = atomic_load_explicit(&card->grant, memory_order_acquire);
        if (fx_grant_holder(g) != FX_PUBLISHING) {
            v->deadline = atomic_load_explicit(&card->deadline_ns, memory_order_acquire);
            v->next_deadline = atomic_load_explicit(&card->next_deadline_ns, memory_order_acquire);
            v->next = atomic_load_explicit(&card->next_grant, memory_order_acquire);
            uint64_t nd = atomic_load_explicit(&card->next_deadline_ns, memory_order_acquire);
            if (atomic_load_explicit(&card->grant, memory_order_acquire) == g && nd == v->next_deadline) {
                v->grant = g;
                return 0;
            }
        }
        uint64_t now = fx_now_ns();
        if (!since)
            since = now;
        else if (now - since > FX_PUBLISH_SPIN_NS)
            return -1;
    }
}

/* Whether the card's preemptor (another registration) wants the card now: this slot's own grant then does not
 * count (flexnpu_shm.h). One load on the fast path while nobody is named. */
static inline __attribute__((always_inline)) int preempted(const struct fx_card_region *card, uint32_t me)
{
    uint32_t key = atomic_load_explicit(&card->preempt, memory_order_acquire);
    if (!key || key == me + 1u)
        return 0;
    const struct fx_preemptor *known = atomic_load_explicit(&g_pre, memory_order_acquire);
    const struct fx_slot *s = known && known->key == key ? known->slot : preemptor_slot(key - 1u);
    return s && atomic_load_explicit(&s->want, memory_order_acquire) == 1;
}

/* Whether this registration is the card's preemptor and wants the card: it may launch, whoever holds it. */
static inline int preempting(const struct fx_card_region *card)
{
    return atomic_load_explicit(&card->preempt, memory_order_acquire) ==
               atomic_load_explicit(&g_slot->slot_index, memory_order_relaxed) + 1u &&
           atomic_load_explicit(&g_slot->want, memory_order_acquire) == 1;
}

static uint64_t granted_view(const struct fx_card_region *card, uint64_t now, uint64_t *deadline, uint64_t *began);

/* The grant word when this registration holds the card now (and the pod has not given that epoch back), else 0:
 * the current grant, or the successor published ahead once the current grant's deadline has passed. *deadline: the
 * end of that holding; *began: when a successor's holding began (the deadline it follows), else 0. */
static inline __attribute__((always_inline)) uint64_t granted_at(const struct fx_card_region *card, uint64_t now,
                                                                uint64_t *deadline, uint64_t *began)
{
    uint32_t me = atomic_load_explicit(&g_slot->slot_index, memory_order_relaxed);
    uint32_t given_back = atomic_load_explicit(&g_slot->yield_epoch, memory_order_relaxed);
    /* the fast path: this slot's own grant, read as the grant word, its deadline, and the same word again */
    uint64_t g = atomic_load_explicit(&card->grant, memory_order_acquire);
    if (fx_grant_holder(g) == me) {
        uint64_t d = atomic_load_explicit(&card->deadline_ns, memory_order_acquire);
        if (atomic_load_explicit(&card->grant, memory_order_acquire) == g && now < d &&
            fx_grant_epoch(g) != given_back && !preempted(card, me)) {
            *deadline = d;
            *began = 0;
            return g | 1u << 31 | 1u; /* never 0, even for epoch 0 holder 0 (callers read the epoch only) */
        }
    }
    return granted_view(card, now, deadline, began);
}

/* granted_at's other cases, from one consistent view (out of line: the fast path stays small). */
static __attribute__((noinline)) uint64_t granted_view(const struct fx_card_region *card, uint64_t now,
                                                       uint64_t *deadline, uint64_t *began)
{
    uint32_t me = atomic_load_explicit(&g_slot->slot_index, memory_order_relaxed);
    uint32_t given_back = atomic_load_explicit(&g_slot->yield_epoch, memory_order_relaxed);
    struct fx_view v;
    if (read_card(card, &v) != 0 || preempted(card, me))
        return 0;
    if (fx_grant_holder(v.grant) == me && now < v.deadline && fx_grant_epoch(v.grant) != given_back) {
        *deadline = v.deadline;
        *began = 0;
        return v.grant | 1u << 31 | 1u; /* never 0, even for epoch 0 holder 0 (callers read the epoch only) */
    }
    if (v.next_deadline && fx_grant_holder(v.next) == me && now >= v.deadline && now < v.next_deadline &&
        fx_grant_epoch(v.next) != given_back) {
        *deadline = v.next_deadline;
        *began = v.deadline;
        return v.next | 1u << 31 | 1u;
    }
    return 0;
}

/* When this registration's published successor grant begins, if one is published and has not begun; else 0. */
static uint64_t successor_starts(const struct fx_card_region *card, uint64_t now)
{
    struct fx_view v;
    if (read_card(card, &v) != 0 || !v.next_deadline ||
        fx_grant_holder(v.next) != atomic_load_explicit(&g_slot->slot_index, memory_order_relaxed) ||
        v.deadline <= now)
        return 0;
    return v.deadline;
}

static void drain_and_report(const struct fx_ops *ops, struct fx_timing *t)
{
    atomic_store_explicit(&g_slot->inflight_est_ns, inflight_est_ns(), memory_order_relaxed);
    if (atomic_load_explicit(&g_inflight_launches, memory_order_relaxed)) {
        timing_drain(ops, t, 1);
        fx_depth++;
        ops->device_sync(); /* other threads' work of this process: their events are collected by them */
        fx_depth--;
    }
}

/* The application synchronised: the early want (set by a launch near the deadline) is withdrawn, or an idle holder
 * would be renewed slice after slice, and charged for them, while it sleeps. Its next launch near a deadline, or
 * after one, asks again. Withdrawn whether or not the grant is still running: a sync that returns after the
 * deadline (its last kernels ran past it) left the flag set, and the daemon would queue the idle tenant again
 * and again. No thread of this process waits meanwhile (a waiting thread clears g_early_want first). */
static void withdraw_early_want(void)
{
    if (!g_slot || !atomic_load_explicit(&g_early_want, memory_order_relaxed) ||
        !atomic_exchange(&g_early_want, 0))
        return;
    atomic_store(&g_slot->want, 0);
    /* The card's preemptor: the holder it stopped sleeps on seq, which this does not change (flexnpud may not
     * have reacted to the want yet, and then writes nothing): wake it to look again (a wake of a read-only
     * mapping's futex word is allowed; it changes nothing there) */
    struct fx_card_region *card = atomic_load_explicit(&g_card, memory_order_relaxed);
    if (card && atomic_load_explicit(&card->preempt, memory_order_relaxed) ==
                    atomic_load_explicit(&g_slot->slot_index, memory_order_relaxed) + 1u)
        futex_wake(&card->seq);
}

/* A holder that will launch again after this grant: want=1 ahead, with no ring (flexnpud reads it at the renewal
 * and at the deadline; a wake-up now would find nothing to do). Withdrawn at the next application sync. */
static void want_early(void)
{
    if (atomic_load_explicit(&g_mode, memory_order_relaxed) != FX_GRANTED ||
        atomic_load_explicit(&g_slot->want, memory_order_relaxed))
        return;
    atomic_store(&g_early_want, 1);
    atomic_store(&g_slot->want, 1);
}

static void ring(void)
{
    atomic_fetch_add(&g_slot->doorbell, 1);
    futex_wake(&g_slot->doorbell);
}

static void ring_doorbell(void)
{
    if (atomic_exchange(&g_slot->want, 1) == 0)
        ring();
}

/* Give the grant back at an application sync: nothing of this process in flight, another tenant waits, and this
 * thread launched in the current grant (a sync before any launch keeps a grant just waited for). */
static void maybe_yield(void)
{
    if (atomic_load_explicit(&g_mode, memory_order_relaxed) != FX_GRANTED || atomic_load(&g_dead))
        return;
    struct fx_card_region *card = atomic_load_explicit(&g_card, memory_order_relaxed);
    if (!atomic_load_explicit(&card->contended, memory_order_relaxed) ||
        atomic_load_explicit(&g_inflight_launches, memory_order_relaxed))
        return;
    uint64_t now = fx_now_ns(), deadline, began, g = granted_at(card, now, &deadline, &began);
    if (!g || (t_epoch != fx_grant_epoch(g) + 1u && !t_preempt) || deadline - now < g_yield_min_ns)
        return;
    /* a successor is published already and begins at this grant's deadline: giving the grant back now would only
     * idle the card until then */
    if (!began && atomic_load_explicit(&card->next_deadline_ns, memory_order_acquire))
        return;
    atomic_store_explicit(&g_slot->yield_ns, now, memory_order_relaxed);
    atomic_store_explicit(&g_slot->yield_epoch, fx_grant_epoch(g), memory_order_release);
    ring();
}

static void record_latency(_Atomic uint32_t *hist, uint64_t from_ns, uint64_t to_ns)
{
    if (from_ns && to_ns >= from_ns)
        atomic_fetch_add_explicit(&hist[fx_hist_bucket((to_ns - from_ns) / 1000)], 1, memory_order_relaxed);
}

static void pace_locally(void);

/* Block until this registration holds the card; the daemon gone (no change for 2 s): pace locally. */
static void wait_for_grant(const struct fx_ops *ops, struct fx_timing *t)
{
    struct fx_card_region *card = atomic_load(&g_card);
    drain_and_report(ops, t);
    int early = atomic_exchange(&g_early_want, 0);
    uint64_t asked = fx_now_ns();
    int was_free = fx_grant_holder(atomic_load_explicit(&card->grant, memory_order_acquire)) == FX_NO_HOLDER;
    if (early) { /* want is 1 already, set with no ring while it held the card: ring now, it waits */
        atomic_store(&g_slot->want, 1);
        ring();
    } else {
        ring_doorbell();
    }
    uint32_t seq = atomic_load_explicit(&card->seq, memory_order_acquire);
    uint64_t since = asked;
    for (;;) {
        uint64_t now = fx_now_ns(), deadline, began;
        if (granted_at(card, now, &deadline, &began)) {
            atomic_store(&g_slot->want, 0);
            atomic_store(&g_dead, 0);
            atomic_store_explicit(&g_fresh_grant, 1, memory_order_relaxed);
            uint64_t ended = began ? began : atomic_load_explicit(&card->ended_ns, memory_order_relaxed);
            if (ended >= asked) {
                record_latency(g_slot->handoff_hist, ended, now);
                if (began)
                    record_latency(g_slot->successor_hist, began, now);
            }
            else if (was_free)
                record_latency(g_slot->acquire_hist, asked, now);
            return;
        }
        if (preempting(card)) {
            /* the card's preemptor: it launches now, flexnpud revokes the holder and grants it when it reacts. Its
             * want stays 1 as an early want does (withdrawn at the next synchronise): the holder stops meanwhile */
            atomic_store(&g_early_want, 1);
            atomic_store(&g_dead, 0);
            atomic_store_explicit(&g_fresh_grant, 1, memory_order_relaxed);
            record_latency(g_slot->acquire_hist, asked, now);
            t_preempt = 1;
            return;
        }
        uint32_t now_seq = atomic_load_explicit(&card->seq, memory_order_acquire);
        if (atomic_load(&g_dead) && now_seq == atomic_load(&g_dead_seq)) {
            pace_locally();
            return;
        }
        if (now_seq != seq) {
            seq = now_seq;
            since = fx_now_ns();
            ring_doorbell();
            continue;
        }
        if (fx_now_ns() - since > FX_DEAD_DAEMON_NS) {
            fx_log_once(&g_log_dead, "flexnpud does not answer (no grant change for 2 s): pacing locally");
            atomic_store(&g_dead_seq, seq);
            atomic_store(&g_dead, 1);
            continue;
        }
        uint64_t starts = successor_starts(card, now);
        if (starts)
            wait_until(&card->seq, seq, starts); /* this slot is next: its holding begins there, by itself */
        else
            futex_wait(&card->seq, seq, FX_FUTEX_WAIT_NS);
    }
}

/* Local pacing: measured device time may run ahead of share * elapsed by one burst, no more. */
static void pace_locally(void)
{
    uint64_t permille = atomic_load_explicit(&g_slot->share_permille, memory_order_relaxed);
    if (permille > 1000)
        permille = 1000;
    if (permille < 10)
        permille = 10;
    uint64_t now = fx_now_ns(), t0 = atomic_load_explicit(&g_pace_t0, memory_order_relaxed);
    uint64_t allowed = (now - t0) / 1000 * permille + g_burst_ns;
    uint64_t used = atomic_load_explicit(&g_used_ns, memory_order_relaxed);
    if (used > allowed) {
        uint64_t wait = (used - allowed) / permille * 1000;
        sleep_ns(wait < 100000000ull ? wait : 100000000ull);
    }
}

static void probe_for_daemon(uint64_t now)
{
    uint64_t next = atomic_load_explicit(&g_next_probe, memory_order_relaxed);
    if (now < next || !atomic_compare_exchange_strong(&g_next_probe, &next, now + FX_PROBE_NS))
        return;
    struct fx_card_region *card = map_card();
    if (card) {
        atomic_store(&g_card, card);
        atomic_store(&g_mode, FX_GRANTED);
    }
}

/* The daemon went quiet: a restarted one may have replaced the region's file (a new inode this mapping never
 * sees). Map the file again, at most once a second; a region that moved on ends local pacing. The old mapping
 * is left in place (other threads may be reading it): 4 KiB per switch. */
static void remap_card(uint64_t now)
{
    uint64_t next = atomic_load_explicit(&g_next_probe, memory_order_relaxed);
    if (now < next || !atomic_compare_exchange_strong(&g_next_probe, &next, now + FX_PROBE_NS))
        return;
    struct fx_card_region *old = atomic_load(&g_card), *card = map_card();
    if (!card)
        return;
    if (atomic_load(&card->seq) == atomic_load(&old->seq) &&
        atomic_load(&card->daemon_pid_start) == atomic_load(&old->daemon_pid_start)) {
        munmap(card, FX_SHM_SIZE);
        return;
    }
    atomic_store(&g_card, card);
    atomic_store(&g_dead, 0);
}

static void slow_path(const struct fx_ops *ops, struct fx_timing *t, uint64_t now)
{
    int saved = errno;
    if (atomic_load_explicit(&g_mode, memory_order_relaxed) == FX_LOCAL) {
        probe_for_daemon(now);
        if (atomic_load(&g_mode) == FX_LOCAL) {
            pace_locally();
            errno = saved;
            return;
        }
    }
    struct fx_card_region *card = atomic_load(&g_card);
    if (atomic_load(&g_dead) && atomic_load_explicit(&card->seq, memory_order_acquire) == atomic_load(&g_dead_seq)) {
        remap_card(now);
        pace_locally();
    } else {
        wait_for_grant(ops, t);
    }
    errno = saved;
}

/* The gate alone: returns once this registration may launch. NULL when ungated (no timing either). */
static struct fx_timing *gate(const struct fx_ops *ops)
{
    int mode = atomic_load_explicit(&g_mode, memory_order_relaxed);
    if (mode == FX_UNGATED)
        return NULL;
    struct fx_thread *st = thread_state();
    if (!st)
        return NULL;
    struct fx_timing *t = &st->abi[ops->abi];
    t_ops[ops->abi] = ops;
    for (;;) {
        uint64_t now = fx_now_ns();
        struct fx_card_region *card = atomic_load_explicit(&g_card, memory_order_relaxed);
        uint64_t deadline = 0, began;
        uint64_t g = mode == FX_LOCAL ? 0 : granted_at(card, now, &deadline, &began);
        if (!g && mode == FX_GRANTED && !atomic_load_explicit(&g_dead, memory_order_relaxed) && preempting(card))
            t_preempt = 1; /* the preemptor, its want set: it launches before its grant */
        else if (!g)
            slow_path(ops, t, now);
        else {
            t_epoch = fx_grant_epoch(g) + 1u;
            t_preempt = 0;
            if (deadline - now < g_renew_ns)
                want_early(); /* launching in the grant's last moments: it will want the card after it too */
        }
        /* In-flight cap, and while granted no more queued than fits before the grant's deadline: work the device
         * runs after it is the next holder's time, which the daemon does not charge to us. With nothing in flight
         * one launch always goes (a kernel longer than the slice still runs, once per grant). For a registration
         * of priority high the cap is at least two and a half launches (one queued behind the one running, not two):
         * its kernels as long as half the cap or more were each launched when the one before had finished, the
         * device idle for the host's wake-up in between (1.6-2.5 ms of a 32-launch step of 0.5-1.5 ms kernels). The
         * deadline still bounds it: past it, its tail would be the next holder's time (a saturating high tenant
         * with the second launch free of the deadline took 40% of the card for its 30%). */
        if (atomic_load_explicit(&g_inflight_launches, memory_order_relaxed) == 0)
            return t;
        uint64_t left = UINT64_MAX;
        mode = atomic_load_explicit(&g_mode, memory_order_relaxed);
        card = atomic_load_explicit(&g_card, memory_order_relaxed);
        if (mode == FX_GRANTED && !atomic_load_explicit(&g_dead, memory_order_relaxed)) {
            if (!g) { /* it waited: the grant it got, from now (the preemptor's: one in-flight cap from now) */
                now = fx_now_ns();
                if (!granted_at(card, now, &deadline, &began))
                    deadline = (t_preempt = preempting(card)) ? now + g_inflight_cap_ns : 0;
            }
            left = deadline > now ? deadline - now : 0;
        }
        if (!cap_inflight(ops, t, left, g_slot && atomic_load_explicit(&g_slot->priority, memory_order_relaxed) >= 2))
            return t;
    }
}

void fx_gate_only(const struct fx_ops *ops) { (void)gate(ops); }

void fx_launch_enter(const struct fx_ops *ops, void *stream)
{
    struct fx_timing *t = gate(ops);
    if (!t)
        return;
    if (t->open.state == 1 && t->open.stream != stream)
        close_open(ops, t);
    if (t->open.state == 0 && ops->stream_capturing(stream) == 0 && ensure_events(ops, &t->open) == 0 &&
        ops->event_record(t->open.start, stream) == 0) {
        t->open.state = 1;
        t->open.stream = stream;
        t->open.launches = 0;
        /* The first interval after a wait for the card, with nothing of this process in flight: the stream is
         * idle, so its start event is stamped now, while the card may still run the previous holder's last kernels
         * (a grant ends at its deadline undrained). A mid event after this first launch bounds them out: the
         * launches after it are timed exactly, the first at most at twice the learned per-launch estimate. */
        t->open.split = 0;
        if (atomic_load_explicit(&g_fresh_grant, memory_order_relaxed) &&
            atomic_load_explicit(&g_inflight_launches, memory_order_relaxed) == 0 &&
            atomic_exchange(&g_fresh_grant, 0) && (t->open.mid || ops->event_create(&t->open.mid) == 0))
            t->open.split = 1;
    }
}

void fx_launch_exit(const struct fx_ops *ops, void *stream, int launched)
{
    struct fx_thread *st = t_state;
    if (!st || atomic_load_explicit(&g_mode, memory_order_relaxed) == FX_UNGATED)
        return;
    struct fx_timing *t = &st->abi[ops->abi];
    if (!launched || t->open.state != 1 || t->open.stream != stream)
        return;
    if (t->open.split == 1)
        t->open.split = t->open.launches == 0 && ops->event_record(t->open.mid, stream) == 0 ? 2 : 0;
    t->open.launches++;
    atomic_fetch_add_explicit(&g_inflight_launches, 1, memory_order_relaxed);
    /* Every FLEXNPU_EVENT_EVERY launches an interval ends; and at the in-flight cap after each launch: the next
     * launch waits at the cap for the oldest interval, and one holding everything in flight drained the queue
     * (the device idle for the host's wake-up and launch at each wait: 2-3 ms of a 32-launch step) */
    if (t->open.launches >= g_event_every ||
        inflight_est_ns() + atomic_load_explicit(&g_est_launch_ns, memory_order_relaxed) > g_inflight_cap_ns) {
        close_open(ops, t);
        if (t->count)
            collect_oldest(ops, t, 0);
    }
}

struct fx_slot *fx_slot_for_account(void)
{
    fx_init();
    return g_slot;
}

int fx_slot_file_for_account(dev_t *dev, ino_t *ino)
{
    fx_init();
    if (!g_slot || g_slot_fd < 0)
        return -1;
    *dev = g_slot_dev;
    *ino = g_slot_ino;
    return g_slot_fd;
}
