"""``flexnpu bench deviceplugin_real``: Allocate latency through the real kubelet, metered by kubelet itself.

The stub-kubelet twin is ``flexnpu bench deviceplugin``; this one runs upstream etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and one kubelet (v1.37.2, the realk8s harness of the source checkout,
built by tests/realk8s/build.sh; the kubelet's containers are local processes of the harness's CRI). On it the
chart's components run as the harness runs them (tests/realk8s/realk8s_flexnpu.py): flexnpud as the node
DaemonSet's pod, the device plugin with the chart's args on four simulated 910B3 cards (40 units), the operator,
the extender and the flexnpu-scheduler, each with its ServiceAccount's token.

Pods of one container asking 1, 2 or 3 ``huawei.com/vnpu`` units are created in batches (default 12, so a batch
always fits the four cards), each batch awaited Running, then deleted and awaited gone; each mode starts with one
unmetered batch (``--warmup``: first connections, the operator's first claims). Two modes:
- ``direct``: ``spec.nodeName`` set by the bench, no scheduler and no extender: the device plugin places the pod
  by its own best fit and answers at once (no claim is waited for);
- ``extender``: ``schedulerName: flexnpu-scheduler``: the extender assigns the card and creates the pod's VNpuClaim
  at bind; Allocate waits (up to the device plugin's claim_wait) for the claim, and when flexnpud has no slot for
  it yet (the operator has not registered it) registers it with flexnpud itself, so its latency holds flexnpud's
  write of the registration (or the operator's, when that came first).
The meter is kubelet's own: the histogram ``kubelet_device_plugin_alloc_duration_seconds{resource_name=
"huawei.com/vnpu"}`` of its /metrics (the time kubelet's device manager spends in the Allocate RPC), read before
and after each mode. Its buckets are kubelet's (Prometheus' default: 5, 10, 25, 50, 100, 250 ms, ...), so p50 and
p99 are given as the bucket bound they fall under and as Prometheus' linear interpolation inside that bucket (past
the largest bound: at least that bound); the
mean is exact (sum / count). The count must equal the pods of the mode: one Allocate per container. Beside it,
not as the meter, the device plugin's own ``flexnpu_deviceplugin_allocate_seconds`` (its side of the RPC, buckets
from 1 ms) read the same way from the plugin's metrics port.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from flexnpu import names
from flexnpu.bench._realk8s import (
    Harness,
    Histogram,
    admin_client,
    chunks,
    harness,
    kubelet_metrics,
    make_namespace,
    parse_histogram,
)
from flexnpu.bench.common import add_common_args, emit, format_table

NAME = "deviceplugin_real"
NAMESPACE = "bench"
IMAGE = "realk8s.local/process:1"
METRIC = "kubelet_device_plugin_alloc_duration_seconds"
PLUGIN_METRIC = "flexnpu_deviceplugin_allocate_seconds"
DAEMON_METRIC = "flexnpu_daemon_write_seconds"
UNIT_CYCLE = (1, 2, 3)
MODES = ("direct", "extender")
TARGET_P99_MS = 10.0
POD_TIMEOUT_S = 180.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"flexnpu bench {NAME}", description=__doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=200, help="pods (so Allocates) per mode (default 200)")
    p.add_argument("--batch", type=int, default=12, help="pods created at once, 1..13 (default 12)")
    p.add_argument("--warmup", type=int, default=12, help="unmetered pods before each mode's (default 12)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)} (default both)")
    p.add_argument("--quick", action="store_true", help="24 pods per mode")
    p.add_argument("--workdir", type=Path, default=None, help="work directory (kept; default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory (component logs)")
    add_common_args(p)
    return p


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.quick:
        args.pods = 24
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.pods < 1 or args.warmup < 0 or not 1 <= args.batch <= 13 or not modes or any(m not in MODES for m in modes):
        p.error(f"--pods >= 1, --warmup >= 0, --batch in 1..13 (the cards' 40 units), --modes of {', '.join(MODES)}")
    h = harness(NAME)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-dp-real-"))
    work.mkdir(parents=True, exist_ok=True)
    plane = h.cluster.ControlPlane(binary=h.cluster.binary_path(), work=work)
    try:
        result = run(h, plane, args, modes)
    finally:
        plane.stop()
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.keep or args.workdir is not None:
        result["logs"] = str(work / "logs")
    emit(NAME, result, table(result), args)
    counts_match = all(m["allocates"] == m["pods"] for m in result["modes"].values())
    return 0 if counts_match else 1


def run(h: Harness, plane: Any, args: argparse.Namespace, modes: list[str]) -> dict[str, Any]:
    from kubernetes import client as k8s

    started = time.monotonic()
    plane.start()
    with admin_client(plane) as api:
        core: Any = k8s.CoreV1Api(api)
        stack = start_stack(h, plane, api, core, with_extender="extender" in modes)
        make_namespace(h, plane, core, NAMESPACE)
        setup_s = time.monotonic() - started
        print(f"control plane, kubelet and flexnpu in {setup_s:.0f} s", file=sys.stderr)
        results = {}
        for mode in modes:
            run_pods(h, plane, core, mode, args.warmup, args.batch, prefix="warm-")
            before, plugin_before, writes_before = alloc_histogram(plane), plugin_histogram(plane), daemon_writes(stack)
            wall = run_pods(h, plane, core, mode, args.pods, args.batch)
            after, plugin_after, writes_after = alloc_histogram(plane), plugin_histogram(plane), daemon_writes(stack)
            if after is None or plugin_after is None or writes_after is None:
                raise SystemExit(f"flexnpu bench {NAME}: no {METRIC}, {PLUGIN_METRIC} or {DAEMON_METRIC} after {mode}")
            results[mode] = {
                "pods": args.pods,
                "wall_s": round(wall, 1),
                **summarize(after.minus(before)),
                "plugin_side": summarize(plugin_after.minus(plugin_before)),
                "daemon_writes": summarize(
                    writes_after if writes_before is None else writes_after.minus(writes_before)
                ),
            }
    return {
        "pods_per_mode": args.pods,
        "warmup_pods_per_mode": args.warmup,
        "batch": args.batch,
        "units_cycle": list(UNIT_CYCLE),
        "cards": len(h.flexnpu.INVENTORY),
        "setup_s": round(setup_s, 1),
        "modes": results,
        "target_p99_ms": TARGET_P99_MS,
        "meter": f"kubelet /metrics {METRIC}{{resource_name={names.RESOURCE_VNPU}}}, delta over each mode",
        "components": "upstream etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet v1.37.2; "
        "flexnpu as the chart runs it",
    }


def start_stack(h: Harness, plane: Any, api: Any, core: Any, with_extender: bool) -> Any:
    """The suite's stack (the flexnpu_stack fixture of tests/realk8s), the node advertising units; the extender and
    the flexnpu-scheduler only ``with_extender`` (mode direct needs neither)."""

    def node_ready() -> bool | None:
        node = core.read_node(plane.node_name)
        ready = [c for c in node.status.conditions or [] if c.type == "Ready"]
        return True if ready and ready[0].status == "True" else None

    h.procs.wait_for("node Ready", node_ready, 180, watch=plane.procs, interval=0.5)
    stack = h.flexnpu.Flexnpu(plane, api)
    stack.install_rbac_and_crds()
    stack.install_daemon_token()
    stack.start_daemon()
    stack.start_operator()
    stack.start_device_plugin(h.flexnpu.INVENTORY)
    if with_extender:
        stack.start_extender()
        stack.start_scheduler()

    def advertised() -> bool | None:
        capacity = core.read_node(plane.node_name).status.capacity or {}
        return True if capacity.get(names.RESOURCE_VNPU) else None

    h.procs.wait_for("huawei.com/vnpu capacity", advertised, 120, watch=plane.procs, interval=0.5)
    return stack


def alloc_histogram(plane: Any) -> Histogram | None:
    return parse_histogram(kubelet_metrics(plane, plane.node), METRIC, {"resource_name": names.RESOURCE_VNPU})


def plugin_histogram(plane: Any) -> Histogram | None:
    """The device plugin's own Allocate histogram (finer buckets, the plugin's side of the RPC; not the meter), on
    the metrics port the harness gave it (its ``--metrics-port`` argument)."""
    [proc] = [p for p in plane.procs if p.name == "device-plugin"]
    [port] = [a.split("=", 1)[1] for a in proc.argv if a.startswith("--metrics-port=")]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return parse_histogram(resp.read().decode("utf-8"), PLUGIN_METRIC, {})


def daemon_writes(stack: Any) -> Histogram | None:
    """flexnpud's histogram of its registration writes (each an fsync of the file and of its directory): what an
    Allocate that registers a claim itself waits for; None before its first write."""
    return parse_histogram(stack.daemon_text("/metrics"), DAEMON_METRIC, {})


def pod_body(mode: str, name: str, index: int, node: str) -> dict[str, Any]:
    units = str(UNIT_CYCLE[index % len(UNIT_CYCLE)])
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "automountServiceAccountToken": False,
        "containers": [
            {
                "name": "main",
                "image": IMAGE,
                "command": ["/bin/sleep", "3600"],
                "resources": {"limits": {names.RESOURCE_VNPU: units}},
            }
        ],
    }
    if mode == "direct":
        spec["nodeName"] = node
    else:
        spec["schedulerName"] = "flexnpu-scheduler"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def run_pods(h: Harness, plane: Any, core: Any, mode: str, pods: int, batch: int, prefix: str = "") -> float:
    """Every pod of ``mode`` created, Running and deleted, ``batch`` at a time; the seconds it took."""
    started = time.monotonic()
    for indexes in chunks(pods, batch):
        named = {f"{mode}-{prefix}{i:04d}": i for i in indexes}
        wanted = set(named)
        for name, i in named.items():
            core.create_namespaced_pod(NAMESPACE, pod_body(mode, name, i, plane.node_name))
        wait_pods(h, plane, core, wanted, running=True)
        for name in sorted(wanted):
            core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=1)
        wait_pods(h, plane, core, wanted, running=False)
    return time.monotonic() - started


def wait_pods(h: Harness, plane: Any, core: Any, wanted: set[str], running: bool) -> None:
    """Until every pod of ``wanted`` is Running (``running``) or gone; a pod that failed ends the benchmark."""

    def reached() -> bool | None:
        pods = {p.metadata.name: p for p in core.list_namespaced_pod(NAMESPACE).items if p.metadata.name in wanted}
        if not running:
            return True if not pods else None
        failed = [n for n, p in pods.items() if p.status.phase == "Failed"]
        if failed:
            raise SystemExit(f"flexnpu bench {NAME}: pod(s) {failed} failed: {why(core, failed[0])}")
        return True if len(pods) == len(wanted) and all(p.status.phase == "Running" for p in pods.values()) else None

    try:
        h.procs.wait_for("pods " + ("Running" if running else "gone"), reached, POD_TIMEOUT_S, watch=plane.procs)
    except TimeoutError as exc:
        raise SystemExit(f"flexnpu bench {NAME}: {exc}; {why(core, sorted(wanted)[0])}") from exc


def why(core: Any, name: str) -> str:
    events = core.list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={name}").items
    return "events of " + name + ": " + "; ".join(f"{e.reason}: {e.message}" for e in events)


def summarize(hist: Histogram) -> dict[str, Any]:
    p50, p50_bound = hist.quantile(0.50)
    p99, p99_bound = hist.quantile(0.99)
    finite = [le for le, _ in hist.buckets if not math.isinf(le)]
    return {
        "allocates": int(hist.count),
        "p50_ms": round(p50 * 1000, 3),
        "p50_bucket_le_ms": bound_ms(p50_bound),
        "p99_ms": round(p99 * 1000, 3),
        "p99_bucket_le_ms": bound_ms(p99_bound),
        "mean_ms": round(hist.sum / hist.count * 1000, 3) if hist.count else math.nan,
        "buckets_ms": [[le * 1000, int(n)] for le, n in hist.buckets if not math.isinf(le)],
        "over_largest_bucket": int(hist.count - (hist.buckets[len(finite) - 1][1] if finite else 0)),
    }


def table(result: dict[str, Any]) -> str:
    rows: list[list[object]] = []
    for mode, r in result["modes"].items():
        label = "direct (nodeName, no extender)" if mode == "direct" else "extender (claim + slot awaited)"
        rows.append([label, *row(r, r["pods"])])
        rows.append(["  device plugin's own histogram", *row(r["plugin_side"], r["pods"])])
        if r["daemon_writes"]["allocates"]:  # none without claims (direct mode)
            rows.append(["  flexnpud's writes (count/pods)", *row(r["daemon_writes"], r["pods"])])
    text = format_table(["Allocate via the real kubelet", "count/pods", "p50 ms", "p99 ms", "mean ms"], rows)
    text += f"\n(kubelet's {METRIC}: bucket bounds {first_mode_bounds(result)} ms; p50/p99 interpolated inside the"
    text += f" bucket, its bound in brackets; target p99 <= {TARGET_P99_MS:g} ms)"
    text += f"\n(the meter is kubelet's; the plugin's {PLUGIN_METRIC} is its own side of the RPC, buckets "
    text += f"{plugin_bounds(result)} ms; flexnpud's {DAEMON_METRIC} counts the writes of its registrations file)"
    if "logs" in result:
        text += f"\ncomponent logs: {result['logs']}"
    return text


def bound_ms(bound: float) -> float | None:
    """A bucket bound in ms for the JSON figures; None for ``+Inf`` (JSON has no infinity)."""
    return None if math.isinf(bound) else round(bound * 1000, 3)


def quantile_cell(figures: dict[str, Any], q: str) -> str:
    bound = figures[f"{q}_bucket_le_ms"]
    value = figures[f"{q}_ms"]
    return f">= {value:g} (over every bucket)" if bound is None else f"{value:.2f} (<= {bound:g})"


def row(figures: dict[str, Any], pods: int) -> list[object]:
    return [
        f"{figures['allocates']}/{pods}",
        quantile_cell(figures, "p50"),
        quantile_cell(figures, "p99"),
        f"{figures['mean_ms']:.2f}",
    ]


def first_mode_bounds(result: dict[str, Any]) -> str:
    for r in result["modes"].values():
        return ", ".join(f"{le:g}" for le, _ in r["buckets_ms"])
    return "-"


def plugin_bounds(result: dict[str, Any]) -> str:
    for r in result["modes"].values():
        return first_mode_bounds({"modes": {"plugin": r["plugin_side"]}})
    return "-"
