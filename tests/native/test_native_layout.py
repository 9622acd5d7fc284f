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
    F(fx_card_region, magic) F(fx_card_region, version) F(fx_card_region, seq) F(fx_card_region, grant)
    F(fx_card_region, deadline_ns) F(fx_card_region, daemon_pid_start)
    F(fx_slot, magic) F(fx_slot, version) F(fx_slot, slot_index) F(fx_slot, card_index) F(fx_slot, mem_cap_bytes)
    F(fx_slot, mem_used_bytes) F(fx_slot, used_ns) F(fx_slot, inflight_est_ns) F(fx_slot, want) F(fx_slot, doorbell)
    F(fx_slot, share_permille) F(fx_slot, priority) F(fx_slot, mem_peak_bytes) F(fx_slot, denied_allocs)
    printf("magic.card=%u\\nmagic.slot=%u\\nversion=%u\\nsize=%u\\nno_holder=%u\\n", FX_CARD_MAGIC, FX_SLOT_MAGIC,
           FX_SHM_VERSION, FX_SHM_SIZE, FX_NO_HOLDER);
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
    python_fields = {f"fx_card_region.{k}": v for k, v in shm.CARD_FIELDS.items()}
    python_fields |= {f"fx_slot.{k}": v for k, v in shm.SLOT_FIELDS.items()}
    assert c_fields == python_fields
    assert (int(out["magic.card"]), int(out["magic.slot"])) == (shm.CARD_MAGIC, shm.SLOT_MAGIC)
    assert (int(out["version"]), int(out["size"]), int(out["no_holder"])) == (shm.VERSION, shm.SHM_SIZE, shm.NO_HOLDER)


def test_the_card_magic_reads_pnxf_in_memory() -> None:
    assert shm.CARD_MAGIC.to_bytes(4, "little") == b"PNXF"
