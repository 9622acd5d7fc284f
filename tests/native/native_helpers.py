"""Helpers of the native tests: build libflexnpu and the fakes, act as a minimal flexnpud, read the fake device.

The build goes to a temporary directory through the project's Makefile (nothing lands in the source tree). The
"daemon" here is only shm.py: it creates the card region and the slots and publishes grants; the tests decide
when, which is what makes "blocked until granted" observable without a timing assertion.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flexnpu import waiting
from flexnpu.shim.grant import shm

REPO = Path(__file__).resolve().parents[2]
NATIVE = REPO / "shim" / "native"
FOREVER_NS = 2**63
MIB = 1 << 20


def missing_toolchain() -> str | None:
    """Why the native tests cannot run here, or None."""
    for tool in ("cc", "make"):
        if shutil.which(tool) is None:
            return f"no `{tool}` on PATH: the native interposer tests need a C toolchain"
    return None


def build(out: Path, *targets: str) -> None:
    """``make -C shim/native BUILD=out targets`` (quiet; the compiler's message on failure)."""
    cmd = ["make", "-s", "-C", str(NATIVE), f"BUILD={out}", *targets]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Bounded polling (``flexnpu.waiting.wait_for``, predicate first)."""
    waiting.wait_for(what, predicate, timeout_s, interval=0.005)


def parse(output: str) -> dict[str, str]:
    """key=value lines of a test program."""
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


@dataclass(frozen=True)
class Client:
    """The fake device's ground truth for one process."""

    pid: int
    busy_ns: int
    launches: int
    mem_bytes: int
    mem_peak: int
    oom: int
    max_ahead_ns: int
    last_end_ns: int


def fake_device(path: Path) -> tuple[int, int, dict[int, Client]]:
    """(capacity, used, clients by pid) from the fake device's shared file (layout: shim/simnpu/native/fakedev.h)."""
    data = path.read_bytes()
    if len(data) < 4608 or struct.unpack_from("<I", data, 4)[0] != 2:
        return 0, 0, {}  # a process is creating it: no client yet
    magic, _state, capacity, used = struct.unpack_from("<IIQQ", data, 0)
    assert magic == 0x56444B46, "not a fake device file"
    clients = {}
    for i in range(64):
        pid, _pad, *rest = struct.unpack_from("<iI7Q", data, 512 + 64 * i)
        if pid:
            clients[pid] = Client(pid, *rest)
    return capacity, used, clients


@dataclass
class Pod:
    """A shim directory with one card region and slots, and the environment a tenant process runs with."""

    root: Path
    build: Path
    card: shm.CardRegion | None
    slots: dict[str, shm.Slot]

    @property
    def shim_dir(self) -> Path:
        return self.root / "shim"

    @property
    def device(self) -> Path:
        return self.root / "fakedev"

    def env(
        self, flexnpu_id: str | None, extra: Mapping[str, str] | None = None, preload: bool = True
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEXNPU_", "LD_"))}
        env.update(
            FLEXNPU_SHIM_DIR=str(self.shim_dir),
            FLEXNPU_FAKEDEV=str(self.device),
            FLEXNPU_FAKEDEV_MIB="1024",
            LD_LIBRARY_PATH=str(self.build / "fake"),
        )
        if flexnpu_id is not None:
            env["FLEXNPU_ID"] = flexnpu_id
        if preload:
            env["LD_PRELOAD"] = str(self.build / "libflexnpu.so")
        env.update(extra or {})
        return env

    def add_slot(self, flexnpu_id: str, *, slot_index: int, mem_cap_bytes: int, share_permille: int = 500) -> shm.Slot:
        path = self.shim_dir / shm.slot_name(flexnpu_id)
        slot = shm.Slot.create(
            str(path),
            slot_index=slot_index,
            card_index=0,
            mem_cap_bytes=mem_cap_bytes,
            share_permille=share_permille,
            priority=1,
        )
        self.slots[flexnpu_id] = slot
        return slot

    def grant(self, slot_index: int, epoch: int, deadline_ns: int = FOREVER_NS) -> None:
        assert self.card is not None
        self.card.publish(slot_index, epoch, deadline_ns)

    def program(self, name: str) -> str:
        return str(self.build / name)

    def close(self) -> None:
        for slot in self.slots.values():
            slot.close()
        if self.card is not None:
            self.card.close()


def make_pod(root: Path, build_dir: Path, with_daemon: bool = True) -> Pod:
    (root / "shim").mkdir(parents=True)
    card = shm.CardRegion.create(str(root / "shim" / shm.card_name(0)), 1 << 32) if with_daemon else None
    return Pod(root, build_dir, card, {})


def run(cmd: list[str], env: Mapping[str, str], timeout_s: float = 60.0) -> dict[str, str]:
    result = subprocess.run(cmd, env=dict(env), capture_output=True, text=True, timeout=timeout_s, check=False)
    assert result.returncode == 0, f"{cmd} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return parse(result.stdout)


# A Python program on the fake AscendCL, for `stepped`: its stream made, then the body.
ACL_PRELUDE = """
import ctypes, sys
acl = ctypes.CDLL("libascendcl.so")
stream = ctypes.c_void_p()
acl.aclrtCreateStream(ctypes.byref(stream))
us = ctypes.c_uint64(100)
def launch():
    return acl.aclrtLaunchKernel(None, 1, ctypes.byref(us), ctypes.c_size_t(8), stream) == 0
"""


class Stepped:
    """A program the test drives line by line: it prints a line, then waits for one on its stdin."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def go(self) -> None:
        """Let it go on past its next ``sys.stdin.readline()``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()


@contextmanager
def stepped(body: str, env: Mapping[str, str]) -> Iterator[Stepped]:
    """Run ``ACL_PRELUDE`` + ``body`` under ``env``; on leaving, wait for it (killed if the test failed first) and
    check that it exited 0."""
    proc = subprocess.Popen(
        [sys.executable, "-c", ACL_PRELUDE + body],
        env=dict(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield Stepped(proc)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 0, err
