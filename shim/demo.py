"""``flexnpu demo``: a simulated 910B3 node sharing one card between three tenants, in real time, no hardware.

It starts, as separate processes, the node daemon (``flexnpu daemon`` with ``devices = sim:910B3x1``) and three
tenants: two batch tenants registered 2 and 8 units that keep the card busy with kernels of mixed lengths, and one
high-priority latency-critical tenant that serves a request (a short model step) every few milliseconds. The
critical tenant first runs alone (its solo latency), then beside the batch tenants.

Two runtimes (``--runtime``; by default ``native`` when the install built it, else ``python``, and it says so):

- ``native``: the tenants call AscendCL (ctypes on the simulated node's fake ``libascendcl.so``) with
  ``libflexnpu.so`` preloaded; flexnpud grants the card through its shared-memory regions. A kernel's length is
  known to the fake device only; the interposer measures device time with device events. Shares come from the
  fake device's kernel log (every kernel's device start and end, per process), never from the scheduler.
- ``python``: the simulated NPU (``flexnpu simnpu``) and the Python runtime (``sitecustomize`` on PYTHONPATH and
  the FLEXNPU_* variables, as a pod is activated); shares from the simulated NPU's ground truth.

The three registrations sum to 12 units on a 10-unit card, so the card is oversubscribed (f = 1.2) and the
units act as weights (DESIGN.md section 3): the critical tenant is served first at each launch boundary, and the
batch tenants split the rest 2:8. Every child process is stopped on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexnpu.shim import native as interposer
from flexnpu.shim.simnpu import native as fakes
from flexnpu.shim.simnpu.native import Kernel, busy_until, kernels_until
from flexnpu.shim.simnpu.node import (
    Node,
    NodeConfig,
    NodeError,
    register,
    shim_dir,
    simulated_node,
    start_worker,
    tenant_env,
    wait_until,
    wait_worker,
)

QUOTA = 10
OVERSUBSCRIPTION = 1.2
SLICE_US = 5000
# Below this busy fraction the demo explains why the batch tenants miss their targets.
BUSY_EXPECTED = 0.95
BATCH_KERNELS_US = (100, 250, 500, 1000, 2000)
CRITICAL_PERIOD_S = 0.020
CRITICAL_STEP_US = (300, 300, 300, 300)
SAMPLE_S = 0.1
# Time the tenant processes get to start and connect before the measurement begins.
STARTUP_S = 2.0
DEFAULT_SECONDS = 7.0
# Native batch tenants synchronise their stream after this many kernels (a training step's end; the interposer
# caps what is in flight meanwhile).
BATCH_BURST = 256
RUNTIMES = ("native", "python")


@dataclass(frozen=True)
class TenantSpec:
    name: str
    units: int
    priority: str
    role: str  # batch | critical


TENANTS = (
    TenantSpec("batch-2", 2, "normal", "batch"),
    TenantSpec("batch-8", 8, "normal", "batch"),
    TenantSpec("critical", 2, "high", "critical"),
)


DemoError = NodeError


# ----- the tenants (run as separate processes) ----------------------------------------------------------------


def _runtime() -> Any:
    from flexnpu.shim.runtime.activation import active

    runtime = active()
    if runtime is None or runtime.simnpu is None:
        raise DemoError("the runtime was not activated by sitecustomize (FLEXNPU_* variables missing?)")
    return runtime


def batch_worker(begin: float, until: float, out: Path) -> None:
    device = _runtime().simnpu
    rng = random.Random(out.name)
    wait_until(begin)
    while time.monotonic() < until:
        device.launch(rng.choice(BATCH_KERNELS_US))
    device.finish()
    out.write_text(json.dumps({"slices": device.slicer.slices}), encoding="utf-8")


def critical_worker(begin: float, until: float, out: Path) -> None:
    device = _runtime().simnpu
    samples: list[tuple[float, float]] = []
    next_at = begin
    while next_at < until:
        wait_until(next_at)
        arrived = max(next_at, time.monotonic())
        with device.step():
            for kernel_us in CRITICAL_STEP_US:
                device.launch(kernel_us)
        samples.append((arrived, (time.monotonic() - arrived) * 1e3))
        next_at += CRITICAL_PERIOD_S
    device.finish()
    out.write_text(json.dumps({"samples": samples}), encoding="utf-8")


def _acl(library: Path) -> Any:
    from flexnpu.shim.simnpu.acl import AclStream

    return AclStream(library)


def native_batch_worker(begin: float, until: float, out: Path, library: Path) -> None:
    """Bursts of kernels of mixed lengths on the fake AscendCL, each burst synchronised (a training step)."""
    device = _acl(library)
    rng = random.Random(out.name)
    wait_until(begin)
    while time.monotonic() < until:
        for _ in range(BATCH_BURST):
            device.launch(rng.choice(BATCH_KERNELS_US))
        device.synchronize()
    device.close()
    out.write_text(json.dumps({"launches": device.launches}), encoding="utf-8")


def native_critical_worker(begin: float, until: float, out: Path, library: Path) -> None:
    """A request every CRITICAL_PERIOD_S: the step's kernels, then a synchronise; latency on the host clock."""
    device = _acl(library)
    samples: list[tuple[float, float]] = []
    next_at = begin
    while next_at < until:
        wait_until(next_at)
        arrived = max(next_at, time.monotonic())
        for kernel_us in CRITICAL_STEP_US:
            device.launch(kernel_us)
        device.synchronize()
        samples.append((arrived, (time.monotonic() - arrived) * 1e3))
        next_at += CRITICAL_PERIOD_S
    device.close()
    out.write_text(json.dumps({"samples": samples}), encoding="utf-8")


# ----- measurement ----------------------------------------------------------------------------------------------


@dataclass
class Series:
    """Ground-truth samples of the simulated NPU: (time s, busy µs by tenant, kernels by tenant)."""

    points: list[tuple[float, dict[str, float], dict[str, float]]] = field(default_factory=list)

    def add(self, stats: dict[str, dict[str, float]]) -> None:
        self.points.append(
            (time.monotonic(), {n: s["busy_us"] for n, s in stats.items()}, {n: s["kernels"] for n, s in stats.items()})
        )

    def share(self, name: str, start: int = 0, end: int = -1) -> float:
        (t0, b0, _), (t1, b1, _) = self.points[start], self.points[end]
        return (b1.get(name, 0.0) - b0.get(name, 0.0)) / max(1e-9, (t1 - t0) * 1e6)

    def rate(self, name: str, start: int = 0, end: int = -1) -> float:
        (t0, _, k0), (t1, _, k1) = self.points[start], self.points[end]
        return (k1.get(name, 0.0) - k0.get(name, 0.0)) / max(1e-9, t1 - t0)


def observe(node: Node, until: float) -> Series:
    from flexnpu.shim.runtime.simnpu_client import SimNpuClient

    series = Series()
    with SimNpuClient(node.sim_socket, name="demo-observer") as observer:
        while True:
            series.add(observer.stats())
            if time.monotonic() >= until:
                return series
            time.sleep(min(SAMPLE_S, max(0.0, until - time.monotonic())))


def series_from_log(
    kernels: Sequence[Kernel], tenant_of: dict[int, str], t0: float, t1: float, step_s: float = SAMPLE_S
) -> Series:
    """The fake device's kernel log as samples every ``step_s`` from t0 to t1 (monotonic seconds), pure."""
    series = Series()
    count = max(1, round((t1 - t0) / step_s))
    for i in range(count + 1):
        at = t0 + (t1 - t0) * i / count
        at_ns = int(at * 1e9)
        series.points.append((at, busy_until(kernels, tenant_of, at_ns), kernels_until(kernels, tenant_of, at_ns)))
    return series


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_tenant(node: Node, tenant: TenantSpec, begin: float, until: float) -> subprocess.Popen[bytes]:
    env = tenant_env(node, tenant.name, tenant.units, tenant.priority)
    out = node.workdir / f"{tenant.name}.json"
    return start_worker(
        node,
        "flexnpu.shim.demo",
        ["--worker", tenant.role, "--begin", repr(begin), "--until", repr(until), "--out", str(out)],
        env,
    )


@dataclass(frozen=True)
class NativeParts:
    """What the native runtime needs from the install: the interposer and the fake AscendCL."""

    interposer: Path
    libraries: Path


def choose_runtime(
    requested: str | None, interposer_path: Path | None, library_dir: Path | None
) -> tuple[str, NativeParts | None, str]:
    """(runtime, native parts, note): ``native`` when asked for or by default when built, else ``python``."""
    missing = [
        what
        for what, path in (
            (f"{interposer.LIBRARY_NAME} (make -C {interposer.HERE})", interposer_path),
            (f"the fake device libraries (make -C {fakes.HERE})", library_dir),
        )
        if path is None
    ]
    if requested == "python":
        return "python", None, "the Python runtime, as asked (--runtime python)"
    if interposer_path is not None and library_dir is not None:
        return "native", NativeParts(interposer_path, library_dir), "libflexnpu.so on the fake AscendCL"
    why = "not built: " + " and ".join(missing) + " (the install had no C compiler?)"
    if requested == "native":
        raise DemoError(f"--runtime native: {why}")
    return "python", None, f"the Python runtime: the native interposer is {why}"


def find_native() -> tuple[Path | None, Path | None]:
    return interposer.find_library(), fakes.find_library_dir()


def run_demo(seconds: float) -> tuple[dict[str, Any], Series, float]:
    """The Python runtime on the simulated NPU (``flexnpu simnpu``)."""
    solo_s = max(1.0, seconds / 4)
    config = NodeConfig(quota=QUOTA, oversubscription=OVERSUBSCRIPTION, share_in_idle=True, slice_us=SLICE_US)
    with simulated_node(config) as node:
        for tenant in TENANTS:
            register(node, tenant.name, tenant.units, tenant.priority)
        solo_from = time.monotonic() + STARTUP_S
        shared_from = solo_from + solo_s
        end = shared_from + seconds
        workers = [start_tenant(node, t, solo_from if t.role == "critical" else shared_from, end) for t in TENANTS]
        observe(node, solo_from)
        solo = observe(node, shared_from)
        cpu0, charged0 = _cpu_s(node.daemon_pid), _charged(node)
        series = observe(node, end)
        daemon_cpu = (_cpu_s(node.daemon_pid) - cpu0) / (end - shared_from)
        charged = _charged_since(charged0, _charged(node))
        for proc in workers:
            wait_worker(proc)
        outputs = {t.name: json.loads((node.workdir / f"{t.name}.json").read_text()) for t in TENANTS}
    result = summarize(solo, series, outputs, shared_from + 0.3)
    _add_daemon_view(result, charged, daemon_cpu)
    result["runtime"] = "python"
    result["meter"] = "the simulated NPU's ground truth (busy time per tenant)"
    return result, series, shared_from


def native_env(node: Node, tenant: TenantSpec, parts: NativeParts) -> dict[str, str]:
    """A tenant process of the native runtime: the interposer preloaded, its slot named, the fake card's file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEXNPU_", "LD_"))}
    env.update(
        {
            "LD_PRELOAD": str(parts.interposer),
            "LD_LIBRARY_PATH": str(parts.libraries),
            interposer.ENV_SHIM_DIR: str(shim_dir(node)),
            interposer.ENV_ID: tenant.name,
            fakes.ENV_DEVICE: str(node.workdir / "fakedev"),
        }
    )
    return env


def _wait_for_slots(node: Node) -> None:
    from flexnpu.shim.grant import shm

    deadline = time.monotonic() + 10
    for tenant in TENANTS:
        while not (shim_dir(node) / shm.slot_name(tenant.name)).exists():
            if time.monotonic() > deadline:
                raise DemoError(f"flexnpud made no shared-memory slot for {tenant.name} (is its grant path on?)")
            time.sleep(0.01)


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _charged(node: Node) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/device/flexnpu-info", timeout=5) as reply:
        registrations = json.loads(reply.read())["registrations"]
    return {str(r["flexnpu_id"]): float(r["device_time_us"]) for r in registrations}


def run_native(seconds: float, parts: NativeParts) -> tuple[dict[str, Any], Series, float]:
    """Tenant processes on the fake AscendCL under libflexnpu, flexnpud's shared-memory grants, the log's meter."""
    solo_s = max(1.0, seconds / 4)
    config = NodeConfig(quota=QUOTA, oversubscription=OVERSUBSCRIPTION, share_in_idle=True, slice_us=SLICE_US)
    with simulated_node(config, simnpu=False) as node:
        for tenant in TENANTS:
            register(node, tenant.name, tenant.units, tenant.priority)
        _wait_for_slots(node)
        solo_from = time.monotonic() + STARTUP_S
        shared_from = solo_from + solo_s
        end = shared_from + seconds
        workers: dict[str, subprocess.Popen[bytes]] = {}
        for t in TENANTS:
            begin = solo_from if t.role == "critical" else shared_from
            args = ["--worker", t.role, "--runtime", "native", "--library", str(parts.libraries / fakes.ASCENDCL)]
            args += ["--begin", repr(begin), "--until", repr(end), "--out", str(node.workdir / f"{t.name}.json")]
            workers[t.name] = start_worker(node, "flexnpu.shim.demo", args, native_env(node, t, parts))
        settled_at = shared_from + 0.3
        wait_until(settled_at)
        cpu0, charged0 = _cpu_s(node.daemon_pid), _charged(node)
        wait_until(end)
        daemon_cpu = (_cpu_s(node.daemon_pid) - cpu0) / (end - settled_at)
        charged = _charged_since(charged0, _charged(node))
        for proc in workers.values():
            wait_worker(proc)
        outputs = {t.name: json.loads((node.workdir / f"{t.name}.json").read_text()) for t in TENANTS}
        kernels = fakes.read_device(node.workdir / "fakedev").kernels
    tenant_of = {proc.pid: name for name, proc in workers.items()}
    solo = series_from_log(kernels, tenant_of, solo_from, shared_from)
    series = series_from_log(kernels, tenant_of, shared_from, end)
    result = summarize(solo, series, outputs, settled_at)
    if sum(charged.values()) <= 0:
        raise DemoError(
            "flexnpud charged no device time: the tenants ran ungated (a libflexnpu.so built from older sources "
            "than flexnpud's shared-memory protocol? rebuild it: pip install -e . or make -C "
            f"{interposer.HERE})"
        )
    _add_daemon_view(result, charged, daemon_cpu)
    result["card"] = "910B3 (simulated: fake AscendCL device, real time)"
    result["runtime"] = "native"
    result["meter"] = "the fake device's kernel log (device start and end of every kernel, per process)"
    return result, series, shared_from


def _charged_since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {t.name: after.get(t.name, 0.0) - before.get(t.name, 0.0) for t in TENANTS}


def _add_daemon_view(result: dict[str, Any], charged: dict[str, float], daemon_cpu: float) -> None:
    """flexnpud's own figures beside the meter's: its share of the device time it charged, its CPU."""
    total = sum(charged.values())
    for entry in result["tenants"]:
        entry["daemon_charged_share"] = round(charged.get(entry["name"], 0.0) / total, 4) if total > 0 else 0.0
    result["daemon_cpu_pct"] = round(daemon_cpu * 100, 2)


def summarize(solo: Series, series: Series, outputs: dict[str, Any], settled_at: float) -> dict[str, Any]:
    first = next((i for i, p in enumerate(series.points) if p[0] >= settled_at), 0)
    samples = [(t, lat) for t, lat in outputs["critical"]["samples"]]
    solo_lat = [lat for t, lat in samples[1:] if t < solo.points[-1][0]]
    shared_lat = [lat for t, lat in samples if t >= series.points[first][0]]
    critical_share = series.share("critical", first)
    rest = max(0.0, 1.0 - critical_share)
    batch_units = sum(t.units for t in TENANTS if t.role == "batch")
    tenants = []
    for tenant in TENANTS:
        if tenant.role == "batch":
            target = rest * tenant.units / batch_units
            entry: dict[str, Any] = {"throughput": series.rate(tenant.name, first)}
        else:
            target = min(solo.share("critical"), tenant.units / QUOTA)
            entry = {
                "throughput": len(shared_lat) / max(1e-9, series.points[-1][0] - series.points[first][0]),
                "p50_ms": _percentile(shared_lat, 0.50),
                "p99_ms": _percentile(shared_lat, 0.99),
                "solo_p50_ms": _percentile(solo_lat, 0.50),
                "solo_p99_ms": _percentile(solo_lat, 0.99),
            }
        tenants.append(
            {
                "name": tenant.name,
                "units": tenant.units,
                "priority": tenant.priority,
                "target_share": round(target, 4),
                "achieved_share": round(series.share(tenant.name, first), 4),
                **entry,
            }
        )
    units = sum(t.units for t in TENANTS)
    return {
        "card": "910B3 (simulated, real time)",
        "quota": QUOTA,
        "registered_units": units,
        "oversubscribed": units > QUOTA,
        "oversubscription": OVERSUBSCRIPTION,
        "measured_seconds": round(series.points[-1][0] - series.points[first][0], 2),
        "card_busy": round(sum(series.share(t.name, first) for t in TENANTS), 4),
        "batch_split": batch_split(tenants),
        "tenants": tenants,
    }


def batch_split(tenants: list[dict[str, Any]]) -> dict[str, float]:
    """Each batch tenant's part of the device time the batch tenants used (registered 2:8: 0.2 / 0.8)."""
    batch = {t["name"]: t["achieved_share"] for t in tenants if "p99_ms" not in t}
    used = sum(batch.values())
    return {name: round(share / used, 4) if used else 0.0 for name, share in batch.items()}


# ----- output -----------------------------------------------------------------------------------------------------


def render(result: dict[str, Any]) -> str:
    rows = [["tenant", "units", "priority", "target", "achieved", "throughput", "p50 ms", "p99 ms", "solo p99 ms"]]
    for t in result["tenants"]:
        unit = "kernels/s" if "p99_ms" not in t else "req/s"
        rows.append(
            [
                t["name"],
                str(t["units"]),
                t["priority"],
                f"{t['target_share']:.1%}",
                f"{t['achieved_share']:.1%}",
                f"{t['throughput']:.0f} {unit}",
                *(f"{t[k]:.2f}" if k in t else "-" for k in ("p50_ms", "p99_ms", "solo_p99_ms")),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    units, quota = result["registered_units"], result["quota"]
    verdict = (
        f"the card is oversubscribed: {units} units registered on a {quota}-unit card (f = "
        f"{result['oversubscription']}), so units act as weights among busy tenants and the high-priority "
        f"tenant is served first"
        if result["oversubscribed"]
        else f"the quota leaves room: {units} of {quota} units registered"
    )
    critical = next(t for t in result["tenants"] if "p99_ms" in t)
    if result.get("runtime") == "native":
        head = (
            f"flexnpu demo: {result['card']}, {result['measured_seconds']} s measured, card busy "
            f"{result['card_busy']:.1%}\nreal processes calling AscendCL with libflexnpu.so preloaded, flexnpud's "
            f"shared-memory grants; shares from the fake device's kernel log (kernel lengths are known to the "
            f"device only), not from flexnpud"
        )
    else:
        head = (
            f"flexnpu demo: {result['card']}, {result['measured_seconds']} s measured (real time; Python "
            f"runtime; shares are the simulated NPU's ground truth), card busy {result['card_busy']:.1%}"
        )
    if "daemon_cpu_pct" in result:
        charged = " / ".join(f"{t['name']} {t['daemon_charged_share']:.1%}" for t in result["tenants"])
        verdict += f"\nflexnpud charged (its own view, from the tenants' reports): {charged}"
        verdict += f"; flexnpud used {result['daemon_cpu_pct']:.1f}% of a CPU"
    measures = (
        "'flexnpu bench native_share' measures the tail with long and short steps on the same fake device."
        if result.get("runtime") == "native"
        else "'flexnpu bench priority' measures the tail in virtual time."
    )
    tail = (
        f"critical tenant p99 {critical['p99_ms']:.2f} ms shared vs {critical['solo_p99_ms']:.2f} ms solo "
        f"({critical['p99_ms'] / max(1e-9, critical['solo_p99_ms']):.2f}x); the device does not preempt, so a "
        f"step waits for the batch kernel in flight (up to {max(BATCH_KERNELS_US) / 1000:g} ms here) and for "
        f"this machine's process wake-ups. {measures}"
    )
    lines = [head, verdict, "", *lines, "", tail]
    if result["card_busy"] < BUSY_EXPECTED:
        sharers = "flexnpud" if result.get("runtime") == "native" else "the simulated NPU and flexnpud"
        split = " / ".join(f"{name} {part:.3f}" for name, part in result["batch_split"].items())
        lines.append(
            f"the card idled {1 - result['card_busy']:.1%} of the time, so the batch tenants reached less "
            f"than their targets (computed for a card kept busy): at each slice boundary the card waits "
            f"for a grant round trip and the next holder's first kernel, and the tenants share this "
            f"machine's CPUs with {sharers}. Of the time they used, the batch tenants "
            f"split {split} (registered 2:8)."
        )
    return "\n".join(lines)


def plot(series: Series, shared_from: float, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise DemoError("--plot needs matplotlib (pip install 'flexnpu[plot]')") from exc
    fig, ax = plt.subplots(figsize=(8, 4))
    times = [p[0] - shared_from for p in series.points[1:]]
    for tenant in TENANTS:
        shares = [series.share(tenant.name, i, i + 1) for i in range(len(series.points) - 1)]
        ax.plot(times, shares, label=f"{tenant.name} ({tenant.units} units, {tenant.priority})")
    ax.set_xlabel("seconds")
    ax.set_ylabel(f"share of the card per {SAMPLE_S * 1000:.0f} ms")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("flexnpu demo: simulated 910B3, device time from the device's own record")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexnpu demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"seconds of shared measurement (default {DEFAULT_SECONDS:g})",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help="native: libflexnpu.so on the fake AscendCL (the default when the install built them); python: the "
        "Python runtime on the simulated NPU (the fallback without a C compiler)",
    )
    parser.add_argument("--plot", metavar="FILE.png", help="draw the shares over time into FILE.png")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run the whole product instead: API server emulator, extender, device plugin, operator, "
        "flexnpud and pods as processes (see 'flexnpu demo --cluster --help')",
    )
    parser.add_argument("--worker", choices=("batch", "critical"), help=argparse.SUPPRESS)
    parser.add_argument("--begin", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--until", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--library", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str]) -> int:
    if "--cluster" in argv:
        from flexnpu_testsupport.box.main import main as cluster_main

        return cluster_main([a for a in argv if a != "--cluster"])
    args = build_parser().parse_args(list(argv))
    if args.worker:
        return _worker_main(args)
    if not 1.0 <= args.seconds <= 600:
        print(f"flexnpu demo: --seconds={args.seconds}: must be in 1..600", file=sys.stderr)
        return 2
    if args.plot:
        _check_plot_target(args.plot)
    try:
        runtime, parts, note = choose_runtime(args.runtime, *find_native())
        if runtime == "python" and args.runtime is None:
            print(f"flexnpu demo: running {note}", file=sys.stderr)
        if parts is not None:
            result, series, shared_from = run_native(args.seconds, parts)
        else:
            result, series, shared_from = run_demo(args.seconds)
        result["runtime_note"] = note
        if args.plot:
            plot(series, shared_from, args.plot)
    except DemoError as exc:
        print(f"flexnpu demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("flexnpu demo: interrupted; every process stopped", file=sys.stderr)
        return 130
    print(json.dumps(result, sort_keys=True) if args.json else render(result))
    return 0


def _check_plot_target(path: str) -> None:
    """Fail before the run, not after it: the directory must exist and matplotlib must be installed."""
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise SystemExit(f"flexnpu demo: --plot={path}: directory {parent} does not exist")
    if importlib.util.find_spec("matplotlib") is None:
        raise SystemExit("flexnpu demo: --plot needs matplotlib (pip install 'flexnpu[plot]')")


def _worker_main(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the demo stops its tenants itself
    try:
        if args.runtime == "native":
            worker = native_batch_worker if args.worker == "batch" else native_critical_worker
            worker(args.begin, args.until, args.out, args.library)
        else:
            (batch_worker if args.worker == "batch" else critical_worker)(args.begin, args.until, args.out)
    except Exception as exc:
        print(f"flexnpu demo tenant: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
