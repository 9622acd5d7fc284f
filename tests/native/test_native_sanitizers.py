"""One run of the interposer built with AddressSanitizer and UndefinedBehaviorSanitizer (``make asan``).

The sanitizer runtime must come first in LD_PRELOAD (the test programs are not instrumented). Leak detection is
off: the interposer keeps a bounded pool of device events per thread (34 at most) until the thread exits, and the
fake libraries keep theirs; both show up as "leaks" at process exit.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from native_helpers import MIB, Pod, build, fake_device, parse


@pytest.fixture(scope="module")
def asan_library(native_build: Path) -> Path:
    build(native_build, "asan")
    return native_build / "asan" / "libflexnpu.so"


def sanitizer_runtime() -> str:
    path = subprocess.run(["cc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True).stdout
    if not Path(path.strip()).is_file():
        pytest.skip("the compiler has no libasan.so")
    return path.strip()


def test_gating_memory_fork_and_lookups_run_clean_under_asan_and_ubsan(pod: Pod, asan_library: Path) -> None:
    slot = pod.add_slot("pod-a", slot_index=1, mem_cap_bytes=16 * MIB)
    pod.grant(1, epoch=1)
    env = pod.env(
        "pod-a",
        {
            "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0",
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        },
    )
    env["LD_PRELOAD"] = f"{sanitizer_runtime()} {asan_library}"
    runs = [
        (["acl_prog", "mixed", "20", "50"], {"launched": "80"}),
        (["acl_prog", "launch", "20", "50", "4"], {"launched": "80"}),
        (["acl_prog", "fork", str(3 * MIB)], {"child_alloc": "0", "parent_free": "0"}),
        (["acl_prog", "escape", str(12 * MIB), "nodeep"], {"after_unsetenv": "0", "rtld_default": "207001"}),
        (["cuda_prog", "launch", "10", "50"], {"launched": "40"}),
        (["cuda_prog", "oom", str(32 * MIB)], {"alloc_rc": "2", "pitch_rc": "2"}),
        (["acl_prog", "gap", "3", "500", "5", "event"], {"launched": "6", "synced": "2"}),
        (["cuda_prog", "gap", "3", "500", "5", "stream"], {"launched": "6", "synced": "2"}),
    ]
    for args, expected in runs:
        result = subprocess.run(
            [pod.program(args[0]), *args[1:]], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, f"{args}:\n{result.stderr}"
        assert "runtime error" not in result.stderr and "AddressSanitizer" not in result.stderr, result.stderr
        report = parse(result.stdout)
        assert {k: report.get(k) for k in expected} == expected, (args, report)
    # the escape run exited holding its 12 MiB; the runs after it gave them back to the pod's account (the ledger)
    assert fake_device(pod.device)[1] == 12 * MIB
    assert (slot.get("mem_used_bytes"), slot.get("reclaimed_bytes")) == (0, 12 * MIB)
