"""A C tenant keeps running across a flexnpud restart (graceful or SIGKILL): real daemon, real interposer.

The tenant is the benchmark workload (tests/native/workload_prog.c) on the fake AscendCL with libflexnpu
preloaded, as a pod's process runs. It maps its slot once, at start, as a pod whose slot file is bind-mounted
must: the restarted daemon has to see its wants in that very file (same inode) and grant them, and the tenant's
kernels have to go on under the new daemon's grants, metered by the fake device's own kernel log.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from daemon_helpers import Daemon, daemon_sections, free_port, write_config

from flexnpu.shim.grant import shm
from flexnpu.shim.simnpu import native as fakes
from flexnpu_testsupport.waiting import wait_for

REPO = Path(__file__).resolve().parents[3]
BODY = {"flexnpu_id": "job-1", "entity": "train", "npu": 0, "chip": 0, "aicore_alloc": 5, "memory_alloc": 1024}
# Saturating batch work for longer than the test: kernels of 0.5-1.5 ms, up to 4 between synchronisations.
WORKLOAD = ("batch", "300", "7", "500", "1500", "4", "0")


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libflexnpu.so, the fake device libraries and the workload program, built into a temporary directory."""
    for tool in ("cc", "make"):
        if shutil.which(tool) is None:
            pytest.skip(f"no `{tool}` on PATH: the C tenant cannot be built")
    out = tmp_path_factory.mktemp("native")
    cmd = ["make", "-s", "-C", str(REPO / "shim" / "native"), f"BUILD={out}", "all", "fakes"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return out


def start(daemons: list[Daemon], config: Path, port: int, log: Path) -> Daemon:
    daemon = Daemon(config, port, log)
    daemons.append(daemon)
    return daemon.start()


def figures(daemon: Daemon) -> dict[str, float]:
    (view,) = daemon.request("GET", "/device/flexnpu-info").body["registrations"]
    return {k: float(view[k]) for k in ("grants", "device_time_us")}


def kernels_since(device: Path, pid: int, since_ns: int) -> int:
    try:
        kernels = fakes.read_device(device).kernels
    except (OSError, fakes.DeviceLogError):
        return 0  # the device file is being made
    return sum(1 for k in kernels if k.pid == pid and k.start_ns >= since_ns)


def mapped_inodes(pid: int, path: Path) -> set[str]:
    """The inodes (and "(deleted)" marks) of ``path`` in the process's mappings."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(str(path)):
            found.add(fields[4] + (" (deleted)" if fields[5].endswith("(deleted)") else ""))
    return found


def granted_and_charged(daemon: Daemon, grants: float) -> bool:
    now = figures(daemon)
    return now["grants"] >= grants and now["device_time_us"] > 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["graceful", "killed"])
def test_a_c_tenant_is_granted_by_the_restarted_daemon_through_the_same_slot(
    tmp_path: Path, short_dir: Path, daemons: list[Daemon], native: Path, signum: signal.Signals
) -> None:
    port = free_port()
    config = write_config(tmp_path, daemon_sections(tmp_path / "state", short_dir, port))
    log = tmp_path / "daemon.log"
    daemon = start(daemons, config, port, log)
    assert daemon.request("POST", "/device/register", BODY).status == 200
    slot = short_dir / shm.slot_name("job-1")
    inode = slot.stat().st_ino
    device = tmp_path / "fakedev"
    env = {
        "PATH": "/usr/bin:/bin",
        "LD_PRELOAD": str(native / "libflexnpu.so"),
        "LD_LIBRARY_PATH": str(native / "fake"),
        "FLEXNPU_SHIM_DIR": str(short_dir),
        "FLEXNPU_ID": "job-1",
        "FLEXNPU_FAKEDEV": str(device),
    }
    tenant = subprocess.Popen(
        [str(native / "workload_prog"), *WORKLOAD], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for("grants and device time under the first daemon", lambda: granted_and_charged(daemon, 5), 30)
        assert mapped_inodes(tenant.pid, slot) == {str(inode)}

        if signum == signal.SIGKILL:
            daemon.kill()
        else:
            assert daemon.stop(signum) == 0
            assert not (short_dir / shm.card_name(0)).exists()  # the card region goes; the slot stays
        assert slot.stat().st_ino == inode
        orphan = short_dir / shm.slot_name("gone-while-down")
        shm.Slot.create(str(orphan), slot_index=0, card_index=0, mem_cap_bytes=0, share_permille=0, priority=0).close()

        daemon = start(daemons, config, port, log)
        wait_for("grants and device time under the restarted daemon", lambda: granted_and_charged(daemon, 5), 30)
        since = time.monotonic_ns()  # the fake device logs CLOCK_MONOTONIC
        grants = figures(daemon)["grants"]
        wait_for(
            "the tenant's kernels to go on under the restarted daemon's grants",
            lambda: kernels_since(device, tenant.pid, since) >= 20 and figures(daemon)["grants"] >= grants + 5,
            30,
        )
        assert tenant.poll() is None
        assert slot.stat().st_ino == inode
        assert mapped_inodes(tenant.pid, slot) == {str(inode)}  # the tenant writes the file the daemon reads
        assert not orphan.exists()
    finally:
        tenant.kill()
        _, err = tenant.communicate(timeout=30)
    assert b"ungated" not in err, err
    assert daemon.stop() == 0
    assert slot.stat().st_ino == inode  # a registration's slot outlives every stop
