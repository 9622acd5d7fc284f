"""The demo's native tenant: Python calling the fake AscendCL through ctypes, with libflexnpu.so preloaded.

ctypes resolves every function with ``dlsym``, which libflexnpu overrides; these tests show the launches of such a
tenant are gated on the card's grant word (blocked, wanting the card, until the test publishes a grant) and that
the device time it reports into its slot comes from device events. The test is the daemon here: it creates the
card region and the slot with ``flexnpu.shim.grant.shm`` and decides when to grant.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rt_helpers import wait_for

from flexnpu.shim import demo
from flexnpu.shim.grant import shm
from flexnpu.shim.simnpu import native as fakes

FOREVER_NS = 2**63
TENANT = """
import sys
from pathlib import Path
from flexnpu.shim.simnpu.acl import AclStream
stream = AclStream(Path(sys.argv[1]))
print("ready", flush=True)
stream.launch(int(sys.argv[2]))
stream.synchronize()
print("done", flush=True)
"""


@pytest.fixture
def parts() -> demo.NativeParts:
    interposer, libraries = demo.find_native()
    if interposer is None or libraries is None:
        pytest.skip("libflexnpu.so or the fake device libraries are not built (no C toolchain at install time)")
    return demo.NativeParts(interposer, libraries)


@pytest.fixture
def card(tmp_path: Path) -> Iterator[shm.CardRegion]:
    (tmp_path / "shim").mkdir()
    region = shm.CardRegion.create(str(tmp_path / "shim" / shm.card_name(0)), 1 << 32)
    yield region
    region.close()


def tenant_env(tmp_path: Path, parts: demo.NativeParts, flexnpu_id: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEXNPU_", "LD_"))}
    env.update(
        LD_PRELOAD=str(parts.interposer),
        LD_LIBRARY_PATH=str(parts.libraries),
        FLEXNPU_SHIM_DIR=str(tmp_path / "shim"),
        FLEXNPU_ID=flexnpu_id,
        FLEXNPU_FAKEDEV=str(tmp_path / "fakedev"),
    )
    return env


def kernels_of(device: Path, pid: int) -> list[fakes.Kernel]:
    try:
        state = fakes.read_device(device)
    except (OSError, fakes.DeviceLogError):
        return []  # no process used the device yet
    return [k for k in state.kernels if k.pid == pid]


def test_a_ctypes_tenant_launches_only_when_granted(
    tmp_path: Path, parts: demo.NativeParts, card: shm.CardRegion
) -> None:
    slot = shm.Slot.create(
        str(tmp_path / "shim" / shm.slot_name("tenant")),
        slot_index=3,
        card_index=0,
        mem_cap_bytes=1 << 30,
        share_permille=500,
        priority=1,
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", TENANT, str(parts.libraries / fakes.ASCENDCL), "700"],
        cwd=tmp_path,
        env=tenant_env(tmp_path, parts, "tenant"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        wait_for(lambda: slot.get("want") == 1, "the tenant to want the card")
        assert kernels_of(tmp_path / "fakedev", proc.pid) == []  # blocked in the gate, nothing launched
        assert proc.poll() is None
        card.publish(3, 1, FOREVER_NS)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        slot_used_ns = slot.get("used_ns")
        slot.close()
    assert proc.returncode == 0, err
    assert out.strip() == "done"
    (kernel,) = kernels_of(tmp_path / "fakedev", proc.pid)
    assert kernel.end_ns - kernel.start_ns == 700_000  # the length only the fake device knew
    # The interposer measured the kernel with device events around it (so never less than the kernel) and reported
    # it into the slot, at exit at the latest; the events also cover the host's time between them (bounded here).
    assert 700_000 <= slot_used_ns <= 5_700_000
