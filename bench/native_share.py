"""``flexnpu bench native_share``: share and priority through the interposer, metered without an oracle.

Real processes, real time: flexnpud (``flexnpu daemon``, one simulated 910B3, its shared-memory grant path in
the socket directory) and, per tenant, a C program on the fake AscendCL (``tests/native/workload_prog.c``) with
``libflexnpu.so`` preloaded. The kernels have random lengths that only the fake device knows (the duration rides
in the kernel's argument), through a random mix of aclrtLaunchKernel, aclmdlExecuteAsync, aclopExecuteV2 and
rtKernelLaunch, with host gaps between bursts. Neither the daemon nor the interposer is told any duration: the
interposer measures device time with the device's events.

The meter is the fake device's ground truth: it logs every kernel's device start and end with the launching
process (``shim/simnpu/native/fakedev.h``). For each 1 s and 100 ms window after a warm-up, a tenant's achieved
share is its device time in the window over the device time of all tenants in it (the card is not 100% busy:
host gaps and hand-offs leave it idle, which the "card busy" column shows); the error is |achieved - target| in
percentage points, mean and max over tenants and windows. Beside each split, in the same run: the same programs
on the same fake device with no interposer (ungated); "of ungated" is the card's busy time under flexnpu over its
busy time ungated. The split "10 alone" is one tenant with the whole card: that ratio is the interposer's and the
daemon's overhead on a bursty program (same program and seed, so the same kernels: device time is work done).

Priority: a critical tenant (priority high, 3 units) runs steps, timed by the program itself on the host's wall
clock from a step's first launch to the return of its synchronise, beside a saturating batch tenant (7 units):
long steps (32 kernels of 0.5-1.5 ms, 300 ms of host time between steps: about 10% of the card) and short steps
(8 of 50-200 us, 20 ms between: about 5%), inside its 30% share as a latency-critical service is. Its p99 is
compared with the same program alone on the card with no interposer (solo).

Hand-off: each tenant's libflexnpu measures, for every grant it waited for, the time from the end of the previous
holder's grant (its deadline, or the moment its holder gave it back at an idle sync) to the moment its own gate let
a launch through, and, on a card nobody held, from its want to that moment (acquire); it counts them in its slot's
histograms (``flexnpu.shim.grant.shm``: 1 µs buckets below 32 µs, 12.5% above), which the bench reads before
flexnpud stops: p50/p99 over all tenants of a run, as the bucket's upper bound. Measured by the tenants, not by the
daemon's bookkeeping. "To a successor" is the part of the hand-offs that went to a tenant flexnpud had published as
the next holder ahead of the deadline (its own timed wait ends there, no daemon in the path); the rest are yields
and revokes, which the daemon hands on.

This is wall-clock time on whatever machine runs it (the output says how many CPUs it has and its load): the
tenants, the daemon and the fake device's host side share those CPUs. Needs ``cc`` and ``make`` and the
repository's ``tests/native`` (it builds the fakes and the workload into a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexnpu.bench.common import add_common_args, emit, format_table
from flexnpu.shim.grant import shm
from flexnpu.waiting import free_port

REPO = Path(__file__).resolve().parents[1]
NATIVE = REPO / "shim" / "native"
QUOTA = 10
LOG_AT, LOG_CAP, LOG_RECORD = 8192, 1 << 18, struct.Struct("<iIQQ")
MIXES: dict[str, tuple[int, int]] = {"short": (50, 200), "mixed": (50, 5000), "long": (1000, 5000)}
# (label, (units, kernel mix) per tenant): the virtual-time share benchmark's splits (bench/share.py).
SPLITS: tuple[tuple[str, tuple[tuple[int, str], ...]], ...] = (
    ("2:8", ((2, "mixed"), (8, "short"))),
    ("3:7", ((3, "long"), (7, "mixed"))),
    ("1:2:7", ((1, "short"), (2, "long"), (7, "mixed"))),
    # one tenant with the whole card: its device time under the interposer against ungated is the overhead (the
    # same program and seed launch the same kernels, so device time in the metered span is work done)
    ("10 alone", ((10, "short"),)),
)
BURST, GAP_US = 8, 200  # batch tenants: 1..8 kernels, synchronise, 0..200 us of host time
# (label, kernels per step, min us, max us, host gap between steps in us)
STEPS: tuple[tuple[str, int, int, int, int], ...] = (
    ("long steps 32 x 0.5-1.5 ms", 32, 500, 1500, 300_000),
    ("short steps 8 x 50-200 us", 8, 50, 200, 20_000),
)
CRITICAL_UNITS, BATCH_UNITS = 3, 7
BATCH_MIX = (200, 5000)


# ----- the meter (pure) --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    pid: int
    start_ns: int
    end_ns: int


def busy_per_window(
    kernels: Sequence[Kernel], tenant_of: Mapping[int, str], t0_ns: int, t1_ns: int, window_ns: int
) -> dict[str, list[int]]:
    """Device time of each tenant in each full window of [t0, t1), kernels split at window edges."""
    count = max(0, (t1_ns - t0_ns) // window_ns)
    busy = {name: [0] * count for name in sorted(set(tenant_of.values()))}
    for k in kernels:
        name = tenant_of.get(k.pid)
        if name is None:
            continue
        start, end = max(k.start_ns, t0_ns), min(k.end_ns, t0_ns + count * window_ns)
        while start < end:
            index = (start - t0_ns) // window_ns
            edge = min(end, t0_ns + (index + 1) * window_ns)
            busy[name][index] += edge - start
            start = edge
    return busy


def share_errors_pp(busy: Mapping[str, Sequence[float]], targets: Mapping[str, float]) -> list[float]:
    """|achieved - target| in percentage points per tenant and window; a window with no device time is skipped."""
    windows = len(next(iter(busy.values()), []))
    errors = []
    for i in range(windows):
        total = sum(b[i] for b in busy.values())
        if total > 0:
            errors += [abs(busy[name][i] / total - targets[name]) * 100 for name in busy]
    return errors


def _hist_figures(counts: Sequence[int]) -> dict[str, Any]:
    return {
        "count": sum(counts),
        "p50_us": shm.hist_percentile(list(counts), 50),
        "p99_us": shm.hist_percentile(list(counts), 99),
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summarise(values: Sequence[float]) -> dict[str, float]:
    return {"mean": sum(values) / len(values) if values else math.nan, "max": max(values, default=math.nan)}


# ----- adapters: the fake device, flexnpud, the tenant programs ------------------------------------------------


def read_kernels(device: Path) -> list[Kernel]:
    """Every kernel in the fake device's log (the ring must not have wrapped: the run is too long otherwise)."""
    data = device.read_bytes()
    (count,) = struct.unpack_from("<Q", data, 40)
    if count > LOG_CAP:
        raise RuntimeError(f"the fake device logged {count} kernels, more than its ring holds: shorten the run")
    return [
        Kernel(pid, start, end)
        for pid, _, start, end in LOG_RECORD.iter_unpack(data[LOG_AT : LOG_AT + count * LOG_RECORD.size])
    ]


def build(out: Path) -> None:
    subprocess.run(
        ["make", "-s", "-C", str(NATIVE), f"BUILD={out}", "all", "fakes"], check=True, stdout=subprocess.DEVNULL
    )


class Daemon:
    """A flexnpud process on one simulated card, its socket directory (and grant files) under ``root``."""

    COMMAND: tuple[str, ...] = (sys.executable, "-m", "flexnpu.shim.daemon.main")

    def __init__(self, root: Path, slice_us: int) -> None:
        self.root, self.port = root, free_port()
        self.shim_dir = root / "shim"
        config = root / "flexnpud.conf"
        config.write_text(
            f"[server]\nhost = 127.0.0.1\nport = {self.port}\n\n"
            f"[flexnpu]\ndevices = sim:910B3x1\npersistent_file_dir = {root / 'state'}\n"
            f"socket_dir = {self.shim_dir}\nschedule_cycle = {slice_us}\n\n[ticker]\nquota = {QUOTA}\n",
            encoding="utf-8",
        )
        self.log = (root / "flexnpud.log").open("w")
        self.process = subprocess.Popen(
            [*self.COMMAND, "--config", str(config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"flexnpud did not start: {(root / 'flexnpud.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            return bool(self.request("GET", "/service/health")["status"] == "ok")
        except OSError:
            return False

    def request(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as reply:
            return json.loads(reply.read())

    def register(self, flexnpu_id: str, units: int, priority: str = "normal") -> None:
        self.request(
            "POST",
            "/device/register",
            {
                "flexnpu_id": flexnpu_id,
                "entity": flexnpu_id,
                "npu": 0,
                "chip": 0,
                "aicore_alloc": units,
                "memory_alloc": 1024,
                "priority": priority,
            },
        )
        slot = self.shim_dir / shm.slot_name(flexnpu_id)
        deadline = time.monotonic() + 10
        while not slot.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"flexnpud made no slot for {flexnpu_id} (is its shared-memory grant path on?)")
            time.sleep(0.01)

    def latencies(self, names: Sequence[str]) -> dict[str, Any]:
        """The tenants' hand-off, successor and acquire histograms (their slots), summed, as p50/p99 µs and
        counts; ``by_tenant``: the same for each tenant alone."""
        kinds = (("handoff", "handoff_hist"), ("successor", "successor_hist"), ("acquire", "acquire_hist"))
        sums = {hist: [0] * shm.HIST_BUCKETS for _, hist in kinds}
        by_tenant: dict[str, dict[str, Any]] = {}
        for flexnpu_id in names:
            try:
                slot = shm.Slot.open(str(self.shim_dir / shm.slot_name(flexnpu_id)))
            except (OSError, shm.ShmError):
                continue
            try:
                own = {hist: slot.histogram(hist) for _, hist in kinds}
            finally:
                slot.close()
            for hist, counts in own.items():
                sums[hist] = [a + b for a, b in zip(sums[hist], counts, strict=True)]
            by_tenant[flexnpu_id] = {kind: _hist_figures(own[hist]) for kind, hist in kinds}
        return {**{kind: _hist_figures(sums[hist]) for kind, hist in kinds}, "by_tenant": by_tenant}

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@contextmanager
def daemon(root: Path, slice_us: int) -> Iterator[Daemon]:
    d = Daemon(root, slice_us)
    try:
        yield d
    finally:
        d.stop()


@dataclass(frozen=True)
class Tenant:
    name: str
    argv: tuple[str, ...]


def tenant_env(build_dir: Path, device: Path, shim_dir: Path | None, flexnpu_id: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEXNPU_", "LD_"))}
    env.update(FLEXNPU_FAKEDEV=str(device), LD_LIBRARY_PATH=str(build_dir / "fake"))
    if shim_dir is not None:
        env.update(LD_PRELOAD=str(build_dir / "libflexnpu.so"), FLEXNPU_SHIM_DIR=str(shim_dir), FLEXNPU_ID=flexnpu_id)
    return env


def run_tenants(
    build_dir: Path, device: Path, shim_dir: Path | None, tenants: Sequence[Tenant], stop_after: Sequence[str] = ()
) -> tuple[dict[int, str], dict[str, str], int]:
    """Start every tenant at once; wait for all (those in ``stop_after`` are terminated once the others are done).
    Returns (tenant by pid, stdout by tenant, start time in CLOCK_MONOTONIC ns)."""
    device.unlink(missing_ok=True)
    t0 = time.monotonic_ns()
    procs = {
        t.name: subprocess.Popen(
            [str(build_dir / "workload_prog"), *t.argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=tenant_env(build_dir, device, shim_dir, t.name),
        )
        for t in tenants
    }
    outputs = {}
    for name, proc in procs.items():
        if name not in stop_after:
            out, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} exited {proc.returncode}: {err[-2000:]}")
            outputs[name] = out
    for name in stop_after:
        procs[name].terminate()
        outputs[name] = procs[name].communicate(timeout=60)[0]
    return {p.pid: name for name, p in procs.items()}, outputs, t0


def parse_output(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


# ----- the scenarios --------------------------------------------------------------------------------------------


def share_run(
    args: argparse.Namespace, build_dir: Path, work: Path, label: str, split: tuple[tuple[int, str], ...]
) -> list[dict[str, Any]]:
    tenants = [
        Tenant(
            f"t{i}-{units}u-{mix}",
            ("batch", str(args.seconds), str(100 + i), *map(str, MIXES[mix]), str(BURST), str(GAP_US)),
        )
        for i, (units, mix) in enumerate(split)
    ]
    targets = {t.name: units / sum(u for u, _ in split) for t, (units, _) in zip(tenants, split, strict=True)}
    rows = []
    for variant in ("flexnpu", "ungated"):
        root = work / f"share-{label.replace(':', '_')}-{variant}"
        root.mkdir()
        device = root / "fakedev"
        daemon_cpu: float | None = None
        charged: dict[str, float] = {}
        latency: dict[str, Any] | None = None
        if variant == "flexnpu":
            with daemon(root, args.slice_us) as d:
                for t, (units, _) in zip(tenants, split, strict=True):
                    d.register(t.name, units)
                cpu0 = d.cpu_s()
                tenant_of, _, t0 = run_tenants(build_dir, device, d.shim_dir, tenants)
                daemon_cpu = (d.cpu_s() - cpu0) / args.seconds * 100
                latency = d.latencies([t.name for t in tenants])
                charged = {
                    r["flexnpu_id"]: float(r["device_time_us"])
                    for r in d.request("GET", "/device/flexnpu-info")["registrations"]
                }
        else:
            tenant_of, _, t0 = run_tenants(build_dir, device, None, tenants)
        kernels = read_kernels(device)
        start, end = t0 + int(args.warmup * 1e9), t0 + int(args.seconds * 1e9)
        row: dict[str, Any] = {"split": label, "variant": variant, "daemon_cpu_pct": daemon_cpu, "latency": latency}
        for window_ms in (1000, 100):
            busy = busy_per_window(kernels, tenant_of, start, end, window_ms * 1_000_000)
            errors = share_errors_pp(busy, targets)
            row[f"error_{window_ms}ms_pp"] = summarise(errors)
            row[f"windows_{window_ms}ms"] = len(next(iter(busy.values()), []))
        whole = busy_per_window(kernels, tenant_of, start, end, end - start)
        total = sum(b[0] for b in whole.values())
        row["card_busy_pct"] = total / (end - start) * 100
        # The daemon's own view beside the ground truth: the device time it charged each tenant (whole run).
        charged_total = sum(charged.values())
        row["tenants"] = [
            {
                "name": name,
                "target_share": targets[name],
                "achieved_share": whole[name][0] / total if total else math.nan,
                "daemon_charged_share": charged[name] / charged_total if charged_total else None,
            }
            for name in whole
        ]
        rows.append(row)
        if variant == "ungated":
            for r in rows:
                r["busy_pct_of_ungated"] = r["card_busy_pct"] / row["card_busy_pct"] * 100
        print(
            f"  share {label} {variant}: error 1 s {row['error_1000ms_pp']['mean']:.2f} pp, 100 ms "
            f"{row['error_100ms_pp']['mean']:.2f} pp",
            file=sys.stderr,
            flush=True,
        )
    return rows


def step_run(
    args: argparse.Namespace,
    build_dir: Path,
    work: Path,
    label: str,
    kernels: int,
    lo: int,
    hi: int,
    gap_us: int,
    steps: int,
) -> list[dict[str, Any]]:
    critical = Tenant("critical", ("steps", str(steps), "7", str(kernels), str(lo), str(hi), str(gap_us)))
    batch = Tenant("batch", ("batch", "600", "8", *map(str, BATCH_MIX), str(BURST), "0"))
    rows: list[dict[str, Any]] = []
    solo_p99 = math.nan
    for variant in ("solo", "flexnpu", "ungated"):
        root = work / f"steps-{kernels}-{variant}"
        root.mkdir()
        device = root / "fakedev"
        with_batch = [critical] if variant == "solo" else [critical, batch]
        stop_after = () if variant == "solo" else ("batch",)
        latency: dict[str, Any] | None = None
        if variant == "flexnpu":
            with daemon(root, args.slice_us) as d:
                d.register("critical", CRITICAL_UNITS, "high")
                d.register("batch", BATCH_UNITS)
                tenant_of, outputs, t0 = run_tenants(build_dir, device, d.shim_dir, with_batch, stop_after)
                latency = d.latencies(["critical", "batch"])
        else:
            tenant_of, outputs, t0 = run_tenants(build_dir, device, None, with_batch, stop_after)
        step_ms = [int(v) / 1e6 for v in parse_output(outputs["critical"])["step_ns"].split(",")]
        p99 = percentile(step_ms, 99)
        if variant == "solo":
            solo_p99 = p99
        whole_end = time.monotonic_ns()
        busy = busy_per_window(read_kernels(device), tenant_of, t0, whole_end, whole_end - t0)
        total = sum(b[0] for b in busy.values())
        rows.append(
            {
                "steps": label,
                "variant": variant,
                "count": len(step_ms),
                "p50_ms": percentile(step_ms, 50),
                "p99_ms": p99,
                "p99_over_solo": p99 / solo_p99,
                "batch_share_pct": busy["batch"][0] / total * 100 if "batch" in busy and total else 0.0,
                "latency": latency,
            }
        )
        print(f"  {label} {variant}: p99 {p99:.2f} ms", file=sys.stderr, flush=True)
    return rows


def machine_note() -> str:
    load = os.getloadavg()[0]
    return (
        f"real time on this machine: {os.cpu_count()} CPUs, load average {load:.1f} at the start; tenants, "
        "flexnpud and the fake device's host side share them"
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flexnpu bench native_share", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each share run (default 6)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not metered at the start (default 1)")
    parser.add_argument("--slice-us", type=int, default=2000, help="flexnpud's schedule_cycle (default 2000)")
    parser.add_argument("--long-steps", type=int, default=30, help="critical steps of the long kind (default 30)")
    parser.add_argument("--short-steps", type=int, default=200, help="critical steps of the short kind (default 200)")
    parser.add_argument("--only", choices=("share", "priority"), help="run one half only")
    add_common_args(parser)
    args = parser.parse_args(list(argv))
    if not (0 <= args.warmup < args.seconds - 1 and args.seconds <= 30):
        parser.error("need 0 <= --warmup < --seconds - 1 and --seconds <= 30")
    if not (100 <= args.slice_us <= 1_000_000 and 1 <= args.long_steps <= 10_000 and 1 <= args.short_steps <= 10_000):
        parser.error("--slice-us in 100..1000000, steps in 1..10000")
    return args


def tables(share: list[dict[str, Any]], steps: list[dict[str, Any]]) -> str:
    parts = []
    if share:
        parts.append(
            format_table(
                [
                    "split",
                    "run",
                    "err 1 s mean/max pp",
                    "err 100 ms mean/max pp",
                    "card busy % (of ungated)",
                    "daemon CPU %",
                    "hand-off p50/p99 us (n)",
                    "to a successor p50/p99 us (n)",
                    "achieved (target) [charged]",
                ],
                [
                    [
                        r["split"],
                        r["variant"],
                        f"{r['error_1000ms_pp']['mean']:.2f} / {r['error_1000ms_pp']['max']:.2f}",
                        f"{r['error_100ms_pp']['mean']:.2f} / {r['error_100ms_pp']['max']:.2f}",
                        f"{r['card_busy_pct']:.1f} ({r['busy_pct_of_ungated']:.1f})",
                        "-" if r["daemon_cpu_pct"] is None else f"{r['daemon_cpu_pct']:.1f}",
                        _latency_cell(r["latency"], "handoff"),
                        _latency_cell(r["latency"], "successor"),
                        " ".join(
                            f"{t['achieved_share'] * 100:.1f}({t['target_share'] * 100:.0f})"
                            + ("" if t["daemon_charged_share"] is None else f"[{t['daemon_charged_share'] * 100:.0f}]")
                            for t in r["tenants"]
                        ),
                    ]
                    for r in share
                ],
            )
        )
    if steps:
        parts.append(
            format_table(
                [
                    "critical",
                    "run",
                    "steps",
                    "p50 ms",
                    "p99 ms",
                    "p99 / solo",
                    "batch share %",
                    "hand-off p50/p99 us (n)",
                    "to a successor p50/p99 us (n)",
                    "acquire p50/p99 us (n)",
                ],
                [
                    [
                        r["steps"],
                        r["variant"],
                        r["count"],
                        r["p50_ms"],
                        r["p99_ms"],
                        r["p99_over_solo"],
                        r["batch_share_pct"],
                        _latency_cell(r["latency"], "handoff"),
                        _latency_cell(r["latency"], "successor"),
                        _latency_cell(r["latency"], "acquire"),
                    ]
                    for r in steps
                ],
            )
        )
    return "\n\n".join(parts)


def _latency_cell(latency: Mapping[str, Any] | None, kind: str) -> str:
    if latency is None:
        return "-"
    figures = latency[kind]
    if not figures["count"]:
        return "- (0)"
    return f"{figures['p50_us']:.0f} / {figures['p99_us']:.0f} ({figures['count']})"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    note = machine_note()
    with tempfile.TemporaryDirectory(prefix="flexnpu-native-share-") as tmp:
        work = Path(tmp)
        try:
            build(work / "build")
        except (OSError, subprocess.CalledProcessError) as exc:
            print(
                f"flexnpu bench native_share: cannot build the interposer and fakes ({exc}): needs cc and make",
                file=sys.stderr,
            )
            return 2
        share = (
            []
            if args.only == "priority"
            else [row for label, split in SPLITS for row in share_run(args, work / "build", work, label, split)]
        )
        steps = (
            []
            if args.only == "share"
            else [
                row
                for label, kernels, lo, hi, gap in STEPS
                for row in step_run(
                    args,
                    work / "build",
                    work,
                    label,
                    kernels,
                    lo,
                    hi,
                    gap,
                    args.long_steps if kernels == 32 else args.short_steps,
                )
            ]
        )
    result = {
        "note": note,
        "meter": "fake device kernel log (device start/end per process); no declared durations",
        "grant_path": "flexnpud (flexnpu.shim.daemon.main) with its shared-memory grant regions",
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "slice_us": args.slice_us,
        "share": share,
        "priority": steps,
    }
    header = (
        "libflexnpu on the fake AscendCL, flexnpud's shared-memory grants; meter: the fake device's kernel "
        f"log\n({note})"
    )
    emit("native_share", result, header + "\n\n" + tables(share, steps), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
