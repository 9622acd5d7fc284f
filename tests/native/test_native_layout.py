"""The C header (shim/native/flexnpu_shm.h) and the Python mirror (shim/grant/shm.py) agree on every field."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from native_helpers import NATIVE, missing_toolchain, parse

from flexnpu.shim.grant import shm

PROGRAM = """
#include <stdio.h>
#include "flexnpu_shm.h"
#define F(s, f) printf(#s "." #f "=%zu,%zu\\n", offsetof(struct s, f), sizeof(((struct s *)0)->f));
int main(void) {
    F(fx_card_region, magic) F(fx_card_region, version) F(fx_card_region, seq) F(fx_card_region, contended)
    F(fx_card_region, grant) F(fx_card_region, deadline_ns) F(fx_card_region, daemon_pid_start)
    F(fx_card_region, ended_ns) F(fx_card_region, next_grant) F(fx_card_region, next_deadline_ns)
    F(fx_card_region, preempt)
    F(fx_slot, magic) F(fx_slot, version) F(fx_slot, slot_index) F(fx_slot, card_index) F(fx_slot, mem_cap_bytes)
    F(fx_slot, mem_used_bytes) F(fx_slot, used_ns) F(fx_slot, inflight_est_ns) F(fx_slot, want) F(fx_slot, doorbell)
    F(fx_slot, share_permille) F(fx_slot, priority) F(fx_slot, mem_peak_bytes) F(fx_slot, denied_allocs)
    F(fx_slot, yield_epoch) F(fx_slot, yield_ns) F(fx_slot, reclaimed_bytes) F(fx_slot, excluded_ns)
    F(fx_slot, handoff_hist) F(fx_slot, acquire_hist) F(fx_slot, successor_hist)
    F(fx_ledger_entry, bytes) F(fx_ledger_entry, pid)
    printf("ledger=%zu,%zu,%u,%u\\n", offsetof(struct fx_slot, ledger), sizeof(struct fx_ledger_entry),
           FX_LEDGER_ENTRIES, FX_LEDGER_LOCK_BASE);
    for (unsigned long long us = 0; us < 300000; us = us < 100 ? us + 1 : us + us / 97 + 1)
        printf("bucket.%llu=%u\\n", us, fx_hist_bucket(us));
    printf("bucket.%llu=%u\\n", ~0ull, fx_hist_bucket(~0ull));
    printf("magic.card=%u\\nmagic.slot=%u\\nversion=%u\\nsize=%u\\nno_holder=%u\\npublishing=%u\\n", FX_CARD_MAGIC,
           FX_SLOT_MAGIC, FX_SHM_VERSION, FX_SHM_SIZE, FX_NO_HOLDER, FX_PUBLISHING);
    return 0;
}
"""


def test_the_c_header_and_shm_py_agree(tmp_path: Path) -> None:
    reason = missing_toolchain()
    if reason:
        pytest.skip(reason)
    source = tmp_path / "layout.c"
    source.write_text(PROGRAM)
    binary = tmp_path / "layout"
    subprocess.run(
        ["cc", "-std=c11", "-Wall", "-Werror", f"-I{NATIVE}", "-o", str(binary), str(source)], check=True, timeout=60
    )
    out = parse(subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout)
    c_fields = {key: tuple(int(n) for n in value.split(",")) for key, value in out.items() if "," in value}
    python_fields: dict[str, tuple[int, ...]] = {f"fx_card_region.{k}": v for k, v in shm.CARD_FIELDS.items()}
    python_fields |= {f"fx_slot.{k}": v for k, v in shm.SLOT_FIELDS.items()}
    python_fields |= {f"fx_slot.{k}": (offset, 4 * count) for k, (offset, count) in shm.SLOT_ARRAYS.items()}
    python_fields |= {f"fx_ledger_entry.{k}": v for k, v in shm.LEDGER_ENTRY_FIELDS.items()}
    python_fields["ledger"] = (shm.LEDGER_OFFSET, shm.LEDGER_ENTRY_SIZE, shm.LEDGER_ENTRIES, shm.LEDGER_LOCK_BASE)
    assert c_fields == python_fields
    buckets = {int(k.split(".", 1)[1]): int(v) for k, v in out.items() if k.startswith("bucket.")}
    assert len(buckets) > 400
    assert {us: shm.hist_bucket(us) for us in buckets} == buckets
    assert (int(out["magic.card"]), int(out["magic.slot"])) == (shm.CARD_MAGIC, shm.SLOT_MAGIC)
    assert (int(out["version"]), int(out["size"]), int(out["no_holder"])) == (shm.VERSION, shm.SHM_SIZE, shm.NO_HOLDER)
    assert int(out["publishing"]) == shm.PUBLISHING


def test_a_histogram_bucket_holds_the_latencies_its_bounds_say() -> None:
    for us in [*range(0, 2000), 4095, 4096, 65535, 1 << 17, 1 << 40]:
        bucket = shm.hist_bucket(us)
        low, high = shm.hist_bounds(bucket)
        assert low <= us and (us < high or bucket == shm.HIST_BUCKETS - 1), (us, bucket, low, high)
    assert [shm.hist_bucket(us) for us in (31, 32, 35, 36, 64)] == [31, 32, 32, 33, 40]
    counts = [0] * shm.HIST_BUCKETS
    counts[shm.hist_bucket(5)] = 98
    counts[shm.hist_bucket(100)] = 2
    assert shm.hist_percentile(counts, 50) == 6.0
    assert shm.hist_percentile(counts, 99) == float(shm.hist_bounds(shm.hist_bucket(100))[1])
    assert shm.hist_percentile([0] * shm.HIST_BUCKETS, 99) is None


def test_the_card_magic_reads_pnxf_in_memory() -> None:
    assert shm.CARD_MAGIC.to_bytes(4, "little") == b"PNXF"
