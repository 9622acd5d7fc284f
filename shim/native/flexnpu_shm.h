/* The shared-memory grant protocol, version 2: the layout libflexnpu and flexnpud agree on.
 *
 * Two files in the shim directory (FLEXNPU_SHIM_DIR, default /var/run/flexnpu, mounted into every pod):
 *   card-<index>.grant   4096 bytes, written only by flexnpud, mapped read-only by tenants;
 *   slot-<id>.shm        4096 bytes, one per registration, created by flexnpud, mapped read-write by every
 *                        process of the pod (pod-wide accounting).
 * Little-endian, naturally aligned, every field accessed with C11 atomics. The Python mirror is
 * shim/grant/shm.py; tests/native/test_native_layout.py checks that both agree on every offset.
 *
 * Version 2 adds the yield (a holder with nothing in flight gives its grant back at an application sync while
 * another tenant waits: card.contended, slot.yield_epoch / yield_ns, then a ring of the slot's doorbell, on which
 * flexnpud sleeps with futex_waitv) and the tenant-measured hand-off figures (card.ended_ns, slot.handoff_hist
 * and slot.acquire_hist, bucketed by fx_hist_bucket).
 *
 * The ledger (in version 2's tail, which an older libflexnpu leaves zero): one entry per process of the pod that
 * has allocated device memory, holding the bytes that process has reserved and not given back. A process owns
 * entry i while it holds an open-file-description lock (F_OFD_SETLK) on byte FX_LEDGER_LOCK_BASE + i of the slot
 * file; the kernel drops the lock when the process is gone, however it ended, whatever pid namespace it ran in.
 * An entry with bytes but no lock is a dead process's: the process that takes it, or one whose allocation would
 * pass the cap, moves those bytes out of mem_used_bytes (into reclaimed_bytes), as the driver freed them.
 */
#ifndef FLEXNPU_SHM_H
#define FLEXNPU_SHM_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define FX_SHM_SIZE 4096u
#define FX_SHM_VERSION 2u
#define FX_CARD_MAGIC 0x46584E50u /* "PNXF" little-endian: bytes 'P','N','X','F' */
#define FX_SLOT_MAGIC 0x534E5846u /* "FXNS" */
#define FX_NO_HOLDER 0xFFFFFFFFu
#define FX_PUBLISHING 0xFFFFFFFEu /* holder_slot while flexnpud writes a grant: retry the read */
#define FX_ID_MAX 128u /* a longer or unsafe flexnpu_id is hashed (see fx_slot_name) */
#define FX_HIST_BUCKETS 128u
#define FX_LEDGER_ENTRIES 128u
#define FX_LEDGER_LOCK_BASE FX_SHM_SIZE /* byte FX_LEDGER_LOCK_BASE + i of a slot file: entry i's lock */

/* Card grant region, written by flexnpud only. A grant is (grant, deadline_ns); a successor may be published ahead
 * as (next_grant, next_deadline_ns): that slot holds the card from deadline_ns until next_deadline_ns without the
 * daemon's reaction at the deadline (its gate's own timed wait ends there), and flexnpud then promotes it to
 * (grant, deadline_ns) with the same epoch.
 *
 * Write orders (each ends with seq + 1 and a FUTEX_WAKE of the waiters):
 *   a grant (or nobody, or a revoke): next_deadline_ns = 0; grant = (epoch, FX_PUBLISHING); ended_ns; deadline_ns;
 *                                     grant = (epoch, holder)
 *   a successor:                      next_deadline_ns = 0; next_grant; next_deadline_ns
 *   its promotion:                    grant = (epoch, FX_PUBLISHING); ended_ns; deadline_ns = next_deadline_ns;
 *                                     grant = next_grant; next_deadline_ns = 0
 * A reader takes a consistent view by reading grant, deadline_ns, next_deadline_ns, next_grant, next_deadline_ns and
 * grant again, and retrying while the two grant words (or the two next_deadline_ns) differ or the holder is
 * FX_PUBLISHING: a grant word never comes back to a value once left (the epoch grows), so equal words mean that no
 * write of the grant happened in between.
 *
 * The preemptor (preempt, written alone, no seq change): a registration of higher priority than every other on the
 * card, while it is owed device time, that flexnpud names ahead. While its slot's want is 1 it may launch whoever
 * holds the card, and every other slot's gate treats its own grant as revoked: a latency-critical step starts
 * without waiting for the daemon's reaction to its want, which then revokes the holder and grants it as usual.
 * Its slot (slot-*.shm whose slot_index is preempt - 1 and card_index this card) is read, never written, by the
 * others. A holding of the preemptor's pod is bounded as any other (its charges empty its bucket, and flexnpud
 * then names nobody); a want it sets without launching stops the holder until flexnpud's next reading of its
 * slot grants it the card, which it is then charged for. */
struct fx_card_region {
    _Atomic uint32_t magic;
    _Atomic uint32_t version;
    _Atomic uint32_t seq;              /* futex word (shared futex) */
    _Atomic uint32_t contended;        /* 1 while a tenant other than the holder waits for the card */
    _Atomic uint64_t grant;            /* (epoch << 32) | holder_slot */
    _Atomic uint64_t deadline_ns;      /* CLOCK_MONOTONIC end of the current grant */
    _Atomic uint64_t daemon_pid_start; /* pid << 32 | start counter */
    _Atomic uint64_t ended_ns;         /* when the grant the current one directly follows ended: its deadline,
                                          or its holder's yield (yield_ns clamped into the holding); 0 when
                                          the card was free before it (or it renews the same holder) */
    _Atomic uint64_t next_grant;       /* (epoch << 32) | holder_slot of the grant that follows at deadline_ns */
    _Atomic uint64_t next_deadline_ns; /* its deadline; 0: no successor published */
    _Atomic uint32_t preempt;          /* the preemptor's holder_slot + 1; 0: none (see below) */
};

/* One process's device memory in the pod's account (tenant-written; see the ledger above). */
struct fx_ledger_entry {
    _Atomic uint64_t bytes; /* reserved by the owning process and not given back */
    _Atomic uint32_t pid;   /* the owner's pid in its own pid namespace: a figure, never a key */
    uint32_t pad;
};

/* Registration slot: "daemon" fields are written by flexnpud only; "tenant" fields by the pod's processes. */
struct fx_slot {
    _Atomic uint32_t magic;
    _Atomic uint32_t version;
    _Atomic uint32_t slot_index;      /* daemon: the holder_slot value that means "this registration holds" */
    _Atomic uint32_t card_index;      /* daemon */
    _Atomic uint64_t mem_cap_bytes;   /* daemon: pod-wide device-memory cap */
    _Atomic uint64_t mem_used_bytes;  /* tenant: pod-wide bytes allocated (fetch-add/sub) */
    _Atomic uint64_t used_ns;         /* tenant: cumulative device time measured by device events */
    _Atomic uint64_t inflight_est_ns; /* tenant: learned estimate of device time in flight at a drain */
    _Atomic uint32_t want;            /* tenant: 1 = has work and waits for a grant */
    _Atomic uint32_t doorbell;        /* tenant: bumped on want 0->1, then FUTEX_WAKE */
    _Atomic uint32_t share_permille;  /* daemon: guaranteed share 0..1000 */
    _Atomic uint32_t priority;        /* daemon: 0 low, 1 normal, 2 high */
    _Atomic uint64_t mem_peak_bytes;  /* tenant: high-water mark */
    _Atomic uint64_t denied_allocs;   /* tenant: allocations refused by the cap */
    _Atomic uint32_t yield_epoch;     /* tenant: the epoch whose grant the pod gave back (then rings doorbell) */
    uint32_t pad;
    _Atomic uint64_t yield_ns;        /* tenant: when it gave it back (CLOCK_MONOTONIC; a figure, not a charge) */
    _Atomic uint64_t reclaimed_bytes; /* tenant: bytes of dead processes moved out of mem_used_bytes (ledger) */
    _Atomic uint64_t excluded_ns;     /* tenant: device time its timing left out of used_ns as another holder's (the
                                         span before the first launch of a grant, past what that launch counts
                                         at: gate.c); flexnpud excuses no more of it than the tails it measured
                                         of the holders before, and charges the rest */
    uint64_t reserved[2];
    /* tenant, figures only: grants this pod waited for, by fx_hist_bucket of the microseconds from the end of the
     * previous holder's grant (card.ended_ns) to the gate letting a launch through (hand-off), and, when nobody
     * held the card, from the want to that moment (acquire) */
    _Atomic uint32_t handoff_hist[FX_HIST_BUCKETS];
    _Atomic uint32_t acquire_hist[FX_HIST_BUCKETS];
    struct fx_ledger_entry ledger[FX_LEDGER_ENTRIES]; /* tenant: per-process device memory (the ledger above) */
    /* tenant, a figure: of the hand-offs in handoff_hist, those to this slot as the successor published ahead
     * (from the deadline to the gate letting a launch through, the daemon out of the path) */
    _Atomic uint32_t successor_hist[FX_HIST_BUCKETS];
};

_Static_assert(sizeof(_Atomic uint64_t) == 8 && _Alignof(_Atomic uint64_t) == 8, "8-byte atomics");
_Static_assert(offsetof(struct fx_card_region, seq) == 8, "card.seq");
_Static_assert(offsetof(struct fx_card_region, grant) == 16, "card.grant");
_Static_assert(offsetof(struct fx_card_region, deadline_ns) == 24, "card.deadline_ns");
_Static_assert(offsetof(struct fx_card_region, contended) == 12, "card.contended");
_Static_assert(offsetof(struct fx_card_region, daemon_pid_start) == 32, "card.daemon_pid_start");
_Static_assert(offsetof(struct fx_card_region, ended_ns) == 40, "card.ended_ns");
_Static_assert(offsetof(struct fx_card_region, next_grant) == 48, "card.next_grant");
_Static_assert(offsetof(struct fx_card_region, next_deadline_ns) == 56, "card.next_deadline_ns");
_Static_assert(offsetof(struct fx_card_region, preempt) == 64, "card.preempt");
_Static_assert(offsetof(struct fx_slot, slot_index) == 8, "slot.slot_index");
_Static_assert(offsetof(struct fx_slot, mem_cap_bytes) == 16, "slot.mem_cap_bytes");
_Static_assert(offsetof(struct fx_slot, mem_used_bytes) == 24, "slot.mem_used_bytes");
_Static_assert(offsetof(struct fx_slot, used_ns) == 32, "slot.used_ns");
_Static_assert(offsetof(struct fx_slot, inflight_est_ns) == 40, "slot.inflight_est_ns");
_Static_assert(offsetof(struct fx_slot, want) == 48, "slot.want");
_Static_assert(offsetof(struct fx_slot, doorbell) == 52, "slot.doorbell");
_Static_assert(offsetof(struct fx_slot, share_permille) == 56, "slot.share_permille");
_Static_assert(offsetof(struct fx_slot, priority) == 60, "slot.priority");
_Static_assert(offsetof(struct fx_slot, mem_peak_bytes) == 64, "slot.mem_peak_bytes");
_Static_assert(offsetof(struct fx_slot, denied_allocs) == 72, "slot.denied_allocs");
_Static_assert(offsetof(struct fx_slot, yield_epoch) == 80, "slot.yield_epoch");
_Static_assert(offsetof(struct fx_slot, yield_ns) == 88, "slot.yield_ns");
_Static_assert(offsetof(struct fx_slot, handoff_hist) == 128, "slot.handoff_hist");
_Static_assert(offsetof(struct fx_slot, acquire_hist) == 640, "slot.acquire_hist");
_Static_assert(offsetof(struct fx_slot, reclaimed_bytes) == 96, "slot.reclaimed_bytes");
_Static_assert(offsetof(struct fx_slot, excluded_ns) == 104, "slot.excluded_ns");
_Static_assert(offsetof(struct fx_slot, ledger) == 1152 && sizeof(struct fx_ledger_entry) == 16, "slot.ledger");
_Static_assert(offsetof(struct fx_slot, successor_hist) == 3200, "slot.successor_hist");
_Static_assert(sizeof(struct fx_slot) <= FX_SHM_SIZE && sizeof(struct fx_card_region) <= FX_SHM_SIZE, "4 KiB");

static inline uint32_t fx_grant_holder(uint64_t grant) { return (uint32_t)(grant & 0xFFFFFFFFu); }
static inline uint32_t fx_grant_epoch(uint64_t grant) { return (uint32_t)(grant >> 32); }

/* Histogram bucket of a latency in microseconds: 1 us wide below 32 us, then 8 buckets per octave (12.5%), the
 * last bucket open-ended (from 2^16 + 7 * 2^13 us on). shm.py's hist_bucket / hist_bounds mirror it. */
static inline uint32_t fx_hist_bucket(uint64_t us)
{
    if (us < 32)
        return (uint32_t)us;
    uint32_t octave = 63u - (uint32_t)__builtin_clzll(us); /* >= 5 */
    uint64_t b = 32u + (octave - 5u) * 8u + ((us >> (octave - 3u)) & 7u);
    return b < FX_HIST_BUCKETS ? (uint32_t)b : FX_HIST_BUCKETS - 1u;
}

#endif
