"""``flexnpu bench gpu``: the interposer on a real NVIDIA GPU, with PyTorch CUDA processes as tenants.

Prepared for the sessions that are lent a GPU; it finishes in about 4 minutes (``--seconds`` scales it) and needs
a CUDA build of torch, ``cc`` and ``make`` (it builds ``libflexnpu.so`` into a temporary directory). Every tenant
is ``bench/gpu/tenant.py`` in its own process; "flexnpu" runs it with ``LD_PRELOAD=libflexnpu.so`` against a real
flexnpud (one card, its shared-memory grant path), "ungated" and "solo" without the interposer.

- **Share 2:8**: two batch tenants (2 and 8 units) in bursts of random fp16 matmuls. The meter: each tenant's
  completed work per window (FLOPs by the host time at which its burst's synchronise returned) turned into device
  time at the rate CUDA events measured for the same program alone on the GPU (solo calibration, no interposer).
  Neither the interposer nor flexnpud knows any kernel's size. (A solo burst's events also count the host's launch
  gaps on an idle GPU, so the rate is a little low and "GPU busy" a little high; the shares are ratios of work
  converted at one rate and do not move.) Per-burst CUDA event times under sharing are not
  used as the meter: a burst's events also span the time the GPU served the other tenant (the gate holds the
  launch after the start event), so they would count the neighbour's slices as one's own.
- **Critical p99**: a high-priority tenant (3 units) runs steps of 8 matmuls of 2048 with 20 ms of host time
  between them, beside a saturating batch tenant (7 units); its p99 step time (host wall clock) against the same
  program solo without the interposer.
- **Memory cap**: a registration with a 4096 MiB cap; 4 processes of that pod, 4 threads each, allocate 64 MiB
  blocks until the first out-of-memory error. ``torch.cuda.mem_get_info()`` in each must report the cap as total,
  and the bytes all of them hold together must not pass it.
- **Overhead**: one batch tenant alone, under the interposer (it holds the card) against ungated: completed work
  per second.

Output: a table and a JSON file (``--out``, default ``bench-results/gpu.json``). Real GPU, real processes, wall
clock. Exits 2 with the reason when there is no CUDA GPU or no torch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexnpu.bench.common import add_common_args, emit, format_table
from flexnpu.bench.native_share import daemon, percentile, share_errors_pp

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NATIVE = REPO / "shim" / "native"
TENANT = HERE / "tenant.py"
MEMORY_CAP_MIB = 4096


def check_gpu() -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available(), torch.__version__)"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        return f"no torch in {sys.executable} ({last})"
    if not probe.stdout.startswith("True"):
        return f"torch {probe.stdout.split()[-1]} sees no CUDA GPU"
    return None


@dataclass(frozen=True)
class Setup:
    """Where libflexnpu.so was built, and whether the tenants run the CPU dry run (``tenant.py --cpu``)."""

    build_dir: Path
    cpu: bool = False


def env_for(build_dir: Path, shim_dir: Path | None, flexnpu_id: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEXNPU_", "LD_PRELOAD"))}
    if shim_dir is not None:
        env.update(LD_PRELOAD=str(build_dir / "libflexnpu.so"), FLEXNPU_SHIM_DIR=str(shim_dir), FLEXNPU_ID=flexnpu_id)
    return env


def run_together(
    setup: Setup, shim_dir: Path | None, tenants: Mapping[str, tuple[str, Sequence[str]]], stop: Sequence[str] = ()
) -> None:
    """Start each tenant (name -> (registration id, tenant.py arguments)), release all at once, wait for them
    (those in ``stop`` are terminated once the others are done)."""
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(TENANT), *(["--cpu"] if setup.cpu else []), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env_for(setup.build_dir, shim_dir, flexnpu_id),
        )
        for name, (flexnpu_id, argv) in tenants.items()
    }
    try:
        for name, proc in procs.items():
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"tenant {name} did not start ({line!r}): {proc.communicate(timeout=60)[1][-2000:]}")
        for proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for name, proc in procs.items():
            if name in stop:
                continue
            _, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"tenant {name} exited {proc.returncode}: {err[-2000:]}")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
            proc.communicate(timeout=60)


def batch_args(seconds: float, seed: int, out: Path) -> list[str]:
    return ["batch", str(seconds), str(seed), "8", str(out)]


def records(path: Path) -> list[Any]:
    return list(json.loads(path.read_text(encoding="utf-8")))


def solo_rate(setup: Setup, work: Path, seconds: float) -> float:
    """FLOPs per device-second of the batch program alone, by its CUDA events (no interposer)."""
    out = work / "solo-rate.json"
    run_together(setup, None, {"solo": ("solo", batch_args(seconds, 1, out))})
    recs = records(out)
    return float(sum(r[1] for r in recs) / (sum(r[2] for r in recs) / 1000))


def device_time_per_window(
    recs: Sequence[Sequence[float]], rate: float, start_ns: int, end_ns: int, window_ns: int
) -> list[float]:
    """Device seconds of completed work per window (a burst counts in the window its synchronise returned in)."""
    windows = [0.0] * max(1, (end_ns - start_ns) // window_ns)
    for at_ns, flops, _ms in recs:
        i = (int(at_ns) - start_ns) // window_ns
        if 0 <= i < len(windows):
            windows[i] += flops / rate
    return windows


def share_scenario(setup: Setup, work: Path, seconds: float, slice_us: int, rate: float) -> list[dict[str, Any]]:
    split = {"t-2u": 2, "t-8u": 8}
    targets = {name: units / 10 for name, units in split.items()}
    rows = []
    for variant in ("flexnpu", "ungated"):
        root = work / f"share-{variant}"
        root.mkdir()
        outs = {name: root / f"{name}.json" for name in split}
        tenants = {name: (name, batch_args(seconds, 10 + i, outs[name])) for i, name in enumerate(split)}
        t0 = time.monotonic_ns()
        if variant == "flexnpu":
            with daemon(root, slice_us) as d:
                for name, units in split.items():
                    d.register(name, units)
                run_together(setup, d.shim_dir, tenants)
        else:
            run_together(setup, None, tenants)
        recs = {name: records(path) for name, path in outs.items()}
        first = max(r[0][0] for r in recs.values() if r)
        last = min(r[-1][0] for r in recs.values() if r)
        # After a warm-up (1 s, or a quarter of a short run), while every tenant still ran
        start, end = max(t0, first) + int(min(1.0, seconds / 4) * 1e9), last
        row: dict[str, Any] = {"variant": variant}
        for window_ms in (1000, 100):
            busy = {
                name: device_time_per_window(r, rate, start, end, window_ms * 1_000_000) for name, r in recs.items()
            }
            row[f"error_{window_ms}ms_pp"] = statistics.fmean(share_errors_pp(busy, targets)) if end > start else None
        whole = {name: sum(device_time_per_window(r, rate, start, end, end - start)) for name, r in recs.items()}
        total = sum(whole.values())
        row["achieved"] = {name: v / total for name, v in whole.items()} if total else {}
        row["gpu_busy_pct"] = total / ((end - start) / 1e9) * 100 if end > start else None
        rows.append(row)
    return rows


def steps_scenario(setup: Setup, work: Path, slice_us: int, steps: int) -> list[dict[str, Any]]:
    rows = []
    solo_p99 = None
    for variant in ("solo", "flexnpu", "ungated"):
        root = work / f"steps-{variant}"
        root.mkdir()
        out = root / "critical.json"
        tenants: dict[str, tuple[str, Sequence[str]]] = {
            "critical": ("critical", ["steps", str(steps), "8", "20", str(out)])
        }
        if variant != "solo":
            tenants["batch"] = ("batch", batch_args(600, 3, root / "batch.json"))
        if variant == "flexnpu":
            with daemon(root, slice_us) as d:
                d.register("critical", 3, "high")
                d.register("batch", 7)
                run_together(setup, d.shim_dir, tenants, stop=("batch",))
        else:
            run_together(setup, None, tenants, stop=("batch",))
        step_ms = [ns / 1e6 for ns in records(out)]
        p99 = percentile(step_ms, 99)
        solo_p99 = p99 if variant == "solo" else solo_p99
        rows.append(
            {
                "variant": variant,
                "p50_ms": percentile(step_ms, 50),
                "p99_ms": p99,
                "p99_over_solo": p99 / solo_p99 if solo_p99 else None,
            }
        )
    return rows


def memory_scenario(setup: Setup, work: Path, slice_us: int) -> dict[str, Any]:
    root = work / "memory"
    root.mkdir()
    outs = [root / f"p{i}.json" for i in range(4)]
    with daemon(root, slice_us) as d:
        d.request(
            "POST",
            "/device/register",
            {
                "flexnpu_id": "pod",
                "entity": "pod",
                "npu": 0,
                "chip": 0,
                "aicore_alloc": 5,
                "memory_alloc": MEMORY_CAP_MIB,
            },
        )
        run_together(setup, d.shim_dir, {f"p{i}": ("pod", ["memory", str(out)]) for i, out in enumerate(outs)})
    results = [json.loads(out.read_text(encoding="utf-8")) for out in outs]
    held = sum(r["allocated_bytes"] for r in results)
    cap = MEMORY_CAP_MIB << 20
    return {
        "cap_bytes": cap,
        "held_bytes_all_processes": held,
        "bytes_past_cap": max(0, held - cap),
        "mem_get_info_total": sorted({r["mem_get_info_total"] for r in results}),
        "out_of_memory_errors": sum(r["out_of_memory_errors"] for r in results),
    }


def overhead_scenario(setup: Setup, work: Path, seconds: float, slice_us: int) -> dict[str, Any]:
    rates = {}
    for variant in ("ungated", "flexnpu"):
        root = work / f"overhead-{variant}"
        root.mkdir()
        out = root / "t.json"
        tenants = {"t": ("t", batch_args(seconds, 5, out))}
        if variant == "flexnpu":
            with daemon(root, slice_us) as d:
                d.register("t", 10)
                run_together(setup, d.shim_dir, tenants)
        else:
            run_together(setup, None, tenants)
        recs = records(out)
        rates[variant] = sum(r[1] for r in recs) / ((recs[-1][0] - recs[0][0]) / 1e9) if len(recs) > 1 else 0.0
    return {
        "tflops_ungated": rates["ungated"] / 1e12,
        "tflops_flexnpu": rates["flexnpu"] / 1e12,
        "throughput_pct_of_ungated": rates["flexnpu"] / rates["ungated"] * 100 if rates["ungated"] else None,
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flexnpu bench gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each share run (default 20)")
    parser.add_argument("--steps", type=int, default=300, help="critical steps per run (default 300)")
    parser.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="run the same processes on torch's CPU device (no GPU): checks the script's plumbing; no figure of it "
        "means anything",
    )
    parser.add_argument("--slice-us", type=int, default=2000, help="flexnpud's schedule_cycle (default 2000)")
    add_common_args(parser)
    return parser.parse_args(argv)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    reason = None if args.cpu_dry_run else check_gpu()
    if reason:
        print(
            f"flexnpu bench gpu: {reason}: this benchmark needs a CUDA GPU and a CUDA build of torch", file=sys.stderr
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="flexnpu-gpu-") as tmp:
        work = Path(tmp)
        build_dir = work / "build"
        subprocess.run(["make", "-s", "-C", str(NATIVE), f"BUILD={build_dir}", "all"], check=True)
        setup = Setup(build_dir, args.cpu_dry_run)
        rate = solo_rate(setup, work, min(args.seconds, 10.0))
        share = share_scenario(setup, work, args.seconds, args.slice_us, rate)
        steps = steps_scenario(setup, work, args.slice_us, args.steps)
        memory = memory_scenario(setup, work, args.slice_us)
        overhead = overhead_scenario(setup, work, min(args.seconds, 10.0), args.slice_us)
    gpu = "CPU DRY RUN (torch's CPU device: these figures check the script, they measure nothing)"
    if not args.cpu_dry_run:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    result = {
        "gpu": gpu,
        "meter": "completed FLOPs per window at the solo rate that CUDA events measured; steps: host wall clock",
        "solo_tflops": rate / 1e12,
        "share_2_8": share,
        "critical_short_steps": steps,
        "memory": memory,
        "overhead": overhead,
    }
    table = "\n\n".join(
        [
            f"flexnpu bench gpu on {gpu or 'a CUDA GPU'} "
            f"({'CPU, nothing gated' if args.cpu_dry_run else 'real GPU'}, real processes, wall clock)",
            format_table(
                ["2:8", "error 1 s pp", "error 100 ms pp", "achieved", "GPU busy %"],
                [
                    [
                        r["variant"],
                        _pct(r["error_1000ms_pp"]),
                        _pct(r["error_100ms_pp"]),
                        " ".join(f"{v:.3f}" for v in r["achieved"].values()),
                        _pct(r["gpu_busy_pct"]),
                    ]
                    for r in share
                ],
            ),
            format_table(
                ["critical steps", "p50 ms", "p99 ms", "p99 / solo"],
                [[r["variant"], _pct(r["p50_ms"]), _pct(r["p99_ms"]), _pct(r["p99_over_solo"])] for r in steps],
            ),
            f"memory: cap {MEMORY_CAP_MIB} MiB, held by 4 processes x 4 threads "
            f"{memory['held_bytes_all_processes'] >> 20} MiB, past the cap {memory['bytes_past_cap']} bytes, "
            f"mem_get_info total {memory['mem_get_info_total']}",
            f"overhead: {overhead['tflops_flexnpu']:.1f} TFLOP/s under libflexnpu vs {overhead['tflops_ungated']:.1f}"
            f" ungated ({_pct(overhead['throughput_pct_of_ungated'])}%)",
        ]
    )
    emit("gpu", result, table, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
