"""Per-launch cost of libflexnpu's fast path, in nanoseconds and in instructions (machine-independent).

Runs ``acl_prog launch N 0`` (N zero-length aclrtLaunchKernel calls on the fake AscendCL, then one synchronise) for
two values of N and takes the slope, so process start, library load and the final synchronise cancel out:

- ``native``: no interposer (the baseline);
- ``preloaded, no slot``: the interposer loaded in a process outside any registration (ungated mode);
- ``granted, events/1024``: the card held, a timing interval every 1024 launches: the fast path itself
  (one atomic load of the grant word, one vDSO clock read, the in-flight check);
- ``granted, events/8``: the default, one timing interval (a start and an end event) per 8 launches;
- ``granted, events/1``: an interval around every launch (the events' cost is the device library's: here the
  fake's, a process-shared mutex each).

Wall-clock figures: best of ``--repeat`` runs. Instructions: ``valgrind --tool=callgrind`` totals (same slope),
when valgrind is on PATH. Needs ``cc`` and ``make`` (it builds into a temporary directory).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flexnpu.bench.common import add_common_args, emit
from flexnpu.shim.grant import shm

REPO = Path(__file__).resolve().parents[1]
NATIVE = REPO / "shim" / "native"
FOREVER_NS = 2**63

MODES: dict[str, dict[str, str] | None] = {
    "native": None,
    "preloaded, no slot": {},
    "granted, events/1024": {"FLEXNPU_EVENT_EVERY": "1024"},
    "granted, events/8": {"FLEXNPU_EVENT_EVERY": "8"},
    "granted, events/1": {"FLEXNPU_EVENT_EVERY": "1"},
}


def build(out: Path) -> None:
    subprocess.run(
        ["make", "-s", "-C", str(NATIVE), f"BUILD={out}", "all", "fakes"], check=True, stdout=subprocess.DEVNULL
    )


def pod(root: Path) -> Path:
    """A shim directory whose card is held by slot 1 for good (a minimal daemon's state)."""
    shim_dir = root / "shim"
    shim_dir.mkdir()
    card = shm.CardRegion.create(str(shim_dir / shm.card_name(0)), 1 << 32)
    slot = shm.Slot.create(
        str(shim_dir / shm.slot_name("bench")),
        slot_index=1,
        card_index=0,
        mem_cap_bytes=1 << 30,
        share_permille=1000,
        priority=1,
    )
    card.publish(1, 1, FOREVER_NS)
    card.close()
    slot.close()
    return shim_dir


def environment(build_dir: Path, shim_dir: Path, extra: dict[str, str] | None, device: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEXNPU_", "LD_"))}
    env.update(FLEXNPU_FAKEDEV=str(device), LD_LIBRARY_PATH=str(build_dir / "fake"), FLEXNPU_SHIM_DIR=str(shim_dir))
    if extra is not None:
        env["LD_PRELOAD"] = str(build_dir / "libflexnpu.so")
        if extra:  # a granted mode: the process belongs to the registration
            env["FLEXNPU_ID"] = "bench"
        env.update(extra)
    return env


def wall_ns(cmd: list[str], env: dict[str, str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter_ns()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter_ns() - started)
    return best


def instructions(cmd: list[str], env: dict[str, str], out: Path) -> int:
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    match = re.search(r"^(?:summary|totals):\s+(\d+)", out.read_text(), re.MULTILINE)
    if not match:
        raise RuntimeError(f"no instruction total in {out}")
    return int(match.group(1))


def measure(args: argparse.Namespace, work: Path) -> list[tuple[str, float, float | None]]:
    build_dir = work / "build"
    build(build_dir)
    shim_dir = pod(work)
    program = str(build_dir / "acl_prog")
    rows: list[tuple[str, float, float | None]] = []
    for name, extra in MODES.items():
        env = environment(build_dir, shim_dir if extra else work / "no-shim", extra, work / f"dev-{len(rows)}")
        low, high = args.launches // 10, args.launches
        ns = (
            wall_ns([program, "launch", str(high), "0"], env, args.repeat)
            - wall_ns([program, "launch", str(low), "0"], env, args.repeat)
        ) / (high - low)
        ir: float | None = None
        if shutil.which("valgrind") and not args.no_callgrind:
            vlow, vhigh = args.callgrind_launches // 5, args.callgrind_launches
            ir = (
                instructions([program, "launch", str(vhigh), "0"], env, work / "cg-high")
                - instructions([program, "launch", str(vlow), "0"], env, work / "cg-low")
            ) / (vhigh - vlow)
        rows.append((name, ns, ir))
    return rows


def table(rows: list[tuple[str, float, float | None]]) -> str:
    base_ns, base_ir = rows[0][1], rows[0][2]
    lines = [
        "per aclrtLaunchKernel on the fake AscendCL (slope over N; wall: best of runs on this machine)",
        f"{'mode':<22} {'ns/launch':>10} {'+ns':>8} {'instr/launch':>13} {'+instr':>8}",
    ]
    for name, ns, ir in rows:
        ir_text = f"{ir:>13.0f}" if ir is not None else f"{'-':>13}"
        extra_ir = f"{ir - base_ir:>8.0f}" if ir is not None and base_ir is not None else f"{'-':>8}"
        lines.append(f"{name:<22} {ns:>10.0f} {ns - base_ns:>8.0f} {ir_text} {extra_ir}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flexnpu bench native_fastpath", description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=200_000, help="launches of the long run (default 200000)")
    parser.add_argument("--callgrind-launches", type=int, default=20_000, help="under valgrind (default 20000)")
    parser.add_argument("--repeat", type=int, default=5, help="wall-clock runs per point, best kept (default 5)")
    parser.add_argument("--no-callgrind", action="store_true", help="skip the instruction counts")
    add_common_args(parser)
    args = parser.parse_args(argv)
    for tool in ("cc", "make"):
        if shutil.which(tool) is None:
            print(f"native_fastpath: needs `{tool}` on PATH", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="flexnpu-fastpath-") as tmp:
        rows = measure(args, Path(tmp))
    base_ns, base_ir = rows[0][1], rows[0][2]
    result = {
        "meter": "wall clock (best of --repeat runs) and valgrind callgrind instruction counts, slope over N launches",
        "modes": {
            name: {
                "ns_per_launch": ns,
                "added_ns": ns - base_ns,
                "instructions_per_launch": ir,
                "added_instructions": None if ir is None or base_ir is None else ir - base_ir,
            }
            for name, ns, ir in rows
        },
    }
    emit("native_fastpath", result, table(rows), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
