/* The simulated device shared by processes: see fakedev.h. */
#define _GNU_SOURCE
#include "fakedev.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define FD_MAGIC 0x56444B46u
#define FD_CLIENTS 64
#define FD_LOG_AT 8192
#define FD_LOG_CAP (1u << 18)
#define FD_FILE_SIZE (FD_LOG_AT + 24u * FD_LOG_CAP)

struct fd_client {
    int32_t pid;
    uint32_t pad;
    uint64_t busy_ns, launches, mem_bytes, mem_peak, oom, max_ahead_ns, last_end_ns;
};

struct fd_header {
    uint32_t magic;
    _Atomic uint32_t state;
    uint64_t capacity, used, busy_until_ns, launches;
    uint64_t log_count; /* kernels ever logged; record i is at i % FD_LOG_CAP */
};

struct fd_log {
    int32_t pid;
    uint32_t pad;
    uint64_t start_ns, end_ns;
};

_Static_assert(sizeof(struct fd_client) == 64, "client record");
_Static_assert(sizeof(struct fd_log) == 24, "log record");
_Static_assert(sizeof(struct fd_header) <= 128, "header fits");
_Static_assert(sizeof(pthread_mutex_t) <= 384, "mutex fits");

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static unsigned char *g_base;
static struct fd_stream g_default_stream;
static _Atomic uint64_t g_process_last;
static int g_client = -1, g_client_pid;

struct fd_block {
    uint64_t address, bytes;
};
static pthread_mutex_t g_blocks_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fd_block *g_blocks;
static size_t g_nblocks, g_capblocks;
static uint64_t g_next_address = 0x100000000000ull;

static struct fd_header *header(void) { return (struct fd_header *)g_base; }
static pthread_mutex_t *mutex(void) { return (pthread_mutex_t *)(g_base + 128); }
static struct fd_client *clients(void) { return (struct fd_client *)(g_base + 512); }

uint64_t fd_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
    struct timespec ts = {(time_t)(t / 1000000000ull), (long)(t % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static void init_file(void)
{
    struct fd_header *h = header();
    uint32_t expected = 0;
    if (atomic_compare_exchange_strong(&h->state, &expected, 1)) {
        pthread_mutexattr_t a;
        pthread_mutexattr_init(&a);
        pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
        pthread_mutex_init(mutex(), &a);
        const char *mib = getenv("FLEXNPU_FAKEDEV_MIB");
        h->capacity = (mib && *mib ? strtoull(mib, NULL, 10) : 65536ull) << 20;
        h->magic = FD_MAGIC;
        atomic_store(&h->state, 2);
        return;
    }
    while (atomic_load(&h->state) != 2)
        sched_yield();
}

static void open_device(void)
{
    const char *path = getenv("FLEXNPU_FAKEDEV");
    char fallback[128];
    if (!path || !*path) {
        snprintf(fallback, sizeof fallback, "/tmp/flexnpu-fakedev-%d", (int)getuid());
        path = fallback;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, FD_FILE_SIZE) != 0) {
        perror("fakedev: open");
        abort();
    }
    g_base = mmap(NULL, FD_FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (g_base == MAP_FAILED) {
        perror("fakedev: mmap");
        abort();
    }
    init_file();
}

static void lock(void)
{
    pthread_once(&g_once, open_device);
    if (pthread_mutex_lock(mutex()) == EOWNERDEAD)
        pthread_mutex_consistent(mutex());
}

static void unlock(void) { pthread_mutex_unlock(mutex()); }

/* The calling process's ground-truth record (lock held). */
static struct fd_client *me(void)
{
    int pid = (int)getpid();
    if (g_client >= 0 && g_client_pid == pid)
        return &clients()[g_client];
    struct fd_client *c = clients();
    int i = 0;
    while (i < FD_CLIENTS && c[i].pid != 0 && c[i].pid != pid)
        i++;
    if (i == FD_CLIENTS)
        i = FD_CLIENTS - 1; /* overflow: the last record is shared */
    c[i].pid = pid;
    g_client = i;
    g_client_pid = pid;
    return &c[i];
}

struct fd_stream *fd_stream_of(void *handle) { return handle ? handle : &g_default_stream; }

struct fd_stream *fd_stream_new(void) { return calloc(1, sizeof(struct fd_stream)); }

void fd_stream_free(struct fd_stream *s)
{
    if (s != &g_default_stream)
        free(s);
}

uint64_t fd_launch(struct fd_stream *s, uint64_t duration_ns)
{
    lock();
    struct fd_header *h = header();
    uint64_t now = fd_now_ns(), start = now;
    if (h->busy_until_ns > start)
        start = h->busy_until_ns;
    if (s->last_ns > start)
        start = s->last_ns;
    uint64_t end = start + duration_ns;
    h->busy_until_ns = end;
    h->launches++;
    struct fd_client *c = me();
    c->busy_ns += duration_ns;
    c->launches++;
    if (end - now > c->max_ahead_ns)
        c->max_ahead_ns = end - now; /* device time queued ahead of the host at this launch */
    c->last_end_ns = end;
    s->last_ns = end;
    struct fd_log *rec = (struct fd_log *)(g_base + FD_LOG_AT) + h->log_count % FD_LOG_CAP;
    rec->pid = c->pid;
    rec->start_ns = start;
    rec->end_ns = end;
    h->log_count++;
    unlock();
    uint64_t last = atomic_load(&g_process_last);
    while (end > last && !atomic_compare_exchange_weak(&g_process_last, &last, end)) {
    }
    return end;
}

static int remember(uint64_t address, uint64_t bytes)
{
    if (g_nblocks == g_capblocks) {
        size_t cap = g_capblocks ? g_capblocks * 2 : 256;
        struct fd_block *b = realloc(g_blocks, cap * sizeof *b);
        if (!b)
            return -1;
        g_blocks = b;
        g_capblocks = cap;
    }
    g_blocks[g_nblocks].address = address;
    g_blocks[g_nblocks].bytes = bytes;
    g_nblocks++;
    return 0;
}

int fd_alloc(uint64_t bytes, uint64_t *address)
{
    lock();
    struct fd_header *h = header();
    struct fd_client *c = me();
    if (bytes == 0 || bytes > h->capacity - h->used) {
        c->oom++;
        unlock();
        return -1;
    }
    h->used += bytes;
    c->mem_bytes += bytes;
    if (c->mem_bytes > c->mem_peak)
        c->mem_peak = c->mem_bytes;
    unlock();
    pthread_mutex_lock(&g_blocks_lock);
    *address = g_next_address;
    g_next_address += (bytes + 4095) / 4096 * 4096;
    int r = remember(*address, bytes);
    pthread_mutex_unlock(&g_blocks_lock);
    return r;
}

int fd_free(uint64_t address)
{
    uint64_t bytes = 0;
    int found = 0;
    pthread_mutex_lock(&g_blocks_lock);
    for (size_t i = 0; i < g_nblocks; i++) {
        if (g_blocks[i].address == address) {
            bytes = g_blocks[i].bytes;
            g_blocks[i] = g_blocks[--g_nblocks];
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&g_blocks_lock);
    if (!found)
        return -1;
    lock();
    header()->used -= bytes;
    me()->mem_bytes -= bytes;
    unlock();
    return 0;
}

void fd_mem_info(uint64_t *free_bytes, uint64_t *total)
{
    lock();
    *total = header()->capacity;
    *free_bytes = header()->capacity - header()->used;
    unlock();
}

void fd_event_record(struct fd_event *e, struct fd_stream *s)
{
    lock();
    uint64_t now = fd_now_ns();
    e->at_ns = s->last_ns > now ? s->last_ns : now;
    e->recorded = 1;
    unlock();
}

int fd_event_done(const struct fd_event *e) { return !e->recorded || fd_now_ns() >= e->at_ns; }
void fd_event_wait(const struct fd_event *e)
{
    if (e->recorded)
        sleep_until(e->at_ns);
}
void fd_stream_wait(struct fd_stream *s) { sleep_until(__atomic_load_n(&s->last_ns, __ATOMIC_RELAXED)); }
void fd_device_wait(void) { sleep_until(atomic_load(&g_process_last)); }

unsigned fd_memory_users(unsigned max, int32_t *pids, uint64_t *bytes)
{
    unsigned n = 0;
    lock();
    const struct fd_client *c = clients();
    for (int i = 0; i < FD_CLIENTS; i++) {
        if (c[i].pid <= 0 || c[i].mem_bytes == 0)
            continue;
        if (kill(c[i].pid, 0) != 0 && errno != EPERM)
            continue; /* exited: a driver lists only live processes (their memory went back with the context) */
        if (n < max) {
            pids[n] = c[i].pid;
            bytes[n] = c[i].mem_bytes;
        }
        n++;
    }
    unlock();
    return n;
}
