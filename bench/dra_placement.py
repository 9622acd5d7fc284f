"""``flexnpu bench dra_placement``: what DRA mode costs in fragmentation, through the real kube-scheduler.

Issue 14 item 5. In DRA mode the scheduler's own allocator (resource.k8s.io/v1, consumable capacity) picks the
card; in device-plugin mode the extender's placement policy does. Both replays run on the realk8s harness's
upstream etcd, kube-apiserver, kube-controller-manager (no node-lifecycle controller) and kube-scheduler
v1.37.2, without kubelets (as ``flexnpu bench scheduler``; it needs a source checkout and
``tests/realk8s/build.sh``). Each mode gets a fresh control plane.

The cluster is every k-th node of the openb node list (k = ceil(nodes in the file / ``--nodes``)), its CPU and
memory from the file, its GPUs as 910B3 cards of U = 10 units. The pods are every k-th pod of the openb pod
list in trace order (then every k-th from offset 1, 2, ... when the list runs out), until the requested cards
reach 100% of the cluster's capacity; a pod asks ``ceil(gpu_milli / 100)`` units of one card, or ``num_gpu``
whole cards, and its CPU and memory from the trace. One pod at a time: the next is created only once a watch
shows this one bound (``spec.nodeName``) or refused (its ``PodScheduled`` condition ``False``).

- ``dra``: one ResourceSlice per node from :func:`flexnpu.dra.core.slices.wanted_slices` and the chart's
  DeviceClass (``mode: dra``); per GPU pod a ResourceClaim created directly (a fraction: one device with
  ``units`` and ``memory`` = floor(units / U x HBM) in its capacity requests, since a claim that names no memory
  reserves the whole card's; several cards: ``count: num_gpu``, no capacity named, so each card is taken whole)
  and the pod naming it by ``resourceClaimName``, scheduled by the default-scheduler.
- ``dra-mostallocated``: the same objects, every pod (CPU-only ones too) scheduled by a second kube-scheduler
  whose NodeResourcesFit scores MostAllocated on CPU and memory instead of the default LeastAllocated: the
  DynamicResources plugin scores nothing but ``firstAvailable`` ranks (v1.37.2), and within a node its allocator
  already takes the first device in slice order that fits, so node packing is the knob a cluster has.
- ``deviceplugin``: Nodes with the inventory annotation and ``huawei.com/vnpu`` capacity, pods with
  ``huawei.com/vnpu`` limits, scheduled by the chart's flexnpu-scheduler with the extender.
- ``deviceplugin-model``: the same nodes and pods, in the same order, through ``flexnpu bench placement``'s
  production path instead (:mod:`flexnpu.bench.placement_production`: the extender's service behind the model of
  kube-scheduler the chart configures, CPU-only pods to the modelled default-scheduler), no processes: how far the
  modelled scheduler lands from the real one.

CPU-only pods go to the default-scheduler in the other two modes. The figure is bench/placement.py's: the unallocated
share of all card units when the arrived requests reach 100% of the capacity.
"""

from __future__ import annotations

import argparse
import importlib
import math
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from urllib3.exceptions import ProtocolError

from flexnpu import names
from flexnpu.annotations import Inventory, encode_inventory
from flexnpu.bench.common import add_common_args, emit, format_table
from flexnpu.bench.openb import UNITS as OPENB_UNITS
from flexnpu.bench.openb import TracePod, load_nodes, load_pods
from flexnpu.bench.placement import NODE_FILE, POD_FILE, default_data_dir
from flexnpu.bench.placement_production import chart_profile, replay_production
from flexnpu.cards import Card
from flexnpu.dra.core.slices import wanted_slices
from flexnpu.extender.core.model import CPU_ONLY, NodeState, PodDemand
from flexnpu.extender.core.policies import DEFAULT_POLICY
from flexnpu.units import UnitsConfig, parse_vnpu_request

REPO: Final = Path(__file__).resolve().parents[1]
HARNESS: Final = REPO / "tests" / "realk8s"
NAMESPACE: Final = "bench"
MODEL: Final = "910B3"
UNITS_PER_CARD: Final = 10
MILLI_PER_UNIT: Final = 100
MODES: Final = ("dra", "dra-mostallocated", "deviceplugin", "deviceplugin-model")
PACKED_SCHEDULER: Final = "dra-mostallocated"
# The default-scheduler's resource score turned from spreading (LeastAllocated) to packing, for CPU and memory:
# the DRA plugin scores no device capacity (only firstAvailable ranks), so this is the one packing knob there is.
PACKED_PROFILE: Final = {
    "schedulerName": PACKED_SCHEDULER,
    "pluginConfig": [
        {
            "name": "NodeResourcesFit",
            "args": {
                "scoringStrategy": {
                    "type": "MostAllocated",
                    "resources": [{"name": "cpu", "weight": 1}, {"name": "memory", "weight": 1}],
                }
            },
        }
    ],
}
GROUP, VERSION = "resource.k8s.io", "v1"
POD_TIMEOUT_S: Final = 120.0


@dataclass(frozen=True)
class BenchPod:
    """One replayed pod: ``units`` of one card (``cards`` == 1) or ``cards`` whole cards; 0 cards: CPU only."""

    name: str
    cards: int
    units: int
    cpu_milli: int
    memory_mib: int

    @property
    def requested_units(self) -> int:
        return self.units if self.cards == 1 else self.cards * UNITS_PER_CARD


def _harness() -> tuple[Any, Any]:
    if not (HARNESS / "realk8s_cluster.py").is_file():
        raise SystemExit(f"flexnpu bench dra_placement: needs a source checkout ({HARNESS} is missing)")
    sys.path.insert(0, str(HARNESS))
    return importlib.import_module("realk8s_cluster"), importlib.import_module("realk8s_flexnpu")


def scaled_nodes(nodes: Sequence[NodeState], wanted: int, sample: int = 0) -> tuple[int, list[NodeState]]:
    """Every k-th node with cards from offset ``sample`` (mod k), k chosen so that about ``wanted`` remain."""
    with_cards = [n for n in nodes if n.cards]
    step = max(1, math.ceil(len(with_cards) / wanted))
    return step, with_cards[sample % step :: step]


def scaled_pods(pods: Sequence[TracePod], step: int, capacity_units: int, sample: int = 0) -> list[BenchPod]:
    """Every ``step``-th pod in trace order (offset ``sample``, then the next ones, mod ``step``) until the
    requests reach the capacity."""
    out: list[BenchPod] = []
    requested = 0
    for offset in ((sample + i) % step for i in range(step)):
        for pod in pods[offset::step]:
            if requested >= capacity_units:
                return out
            request = pod.demand.request
            cards = request.whole_cards or (1 if request.units else 0)
            milli = pod.milli // cards if cards else 0
            units = math.ceil(milli / MILLI_PER_UNIT) if cards == 1 else UNITS_PER_CARD * (cards > 0)
            bench = BenchPod(f"pod-{len(out):05d}", cards, units, pod.demand.cpu_milli, pod.demand.host_memory_mib)
            out.append(bench)
            requested += bench.requested_units
    return out


def node_bodies(index: int, node: NodeState, mode: str) -> tuple[dict[str, Any], dict[str, Any], list[Card]]:
    """The Node, its status and its cards for ``mode`` (DRA: no extended resource; device plugin: units)."""
    name = f"node-{index:04d}"
    cards = [Card.of_model(MODEL, i, f"{name}-c{i}") for i in range(len(node.cards))]
    meta: dict[str, Any] = {"name": name, "labels": {"kubernetes.io/hostname": name}}
    resources = {"cpu": f"{node.cpu_milli_total}m", "memory": f"{node.host_memory_mib_total}Mi", "pods": "256"}
    if mode == "deviceplugin":
        meta["annotations"] = {names.ANNOTATION_INVENTORY: encode_inventory(Inventory(cards=tuple(cards)))}
        resources[names.RESOURCE_VNPU] = str(len(cards) * UNITS_PER_CARD)
    status = {
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Bench", "message": "no kubelet"}],
        }
    }
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta}, status, cards


def claim_body(pod: BenchPod, hbm_mib: int) -> dict[str, Any]:
    exactly: dict[str, Any] = {"deviceClassName": names.DRA_DEVICE_CLASS}
    if pod.cards == 1:
        memory = pod.units * hbm_mib // UNITS_PER_CARD
        requests = {names.DRA_CAPACITY_UNITS: str(pod.units), names.DRA_CAPACITY_MEMORY: f"{memory}Mi"}
        exactly["capacity"] = {"requests": requests}
    else:
        exactly.update(allocationMode="ExactCount", count=pod.cards)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ResourceClaim",
        "metadata": {"name": pod.name, "namespace": NAMESPACE},
        "spec": {"devices": {"requests": [{"name": "npu", "exactly": exactly}]}},
    }


def pod_body(pod: BenchPod, mode: str) -> dict[str, Any]:
    requests = {"cpu": f"{pod.cpu_milli}m", "memory": f"{pod.memory_mib}Mi"}
    container: dict[str, Any] = {"name": "main", "image": "bench.local/none:1", "resources": {"requests": requests}}
    spec: dict[str, Any] = {"automountServiceAccountToken": False, "containers": [container]}
    if mode == PACKED_SCHEDULER:
        spec["schedulerName"] = PACKED_SCHEDULER
    if pod.cards and mode != "deviceplugin":
        spec["resourceClaims"] = [{"name": "npu", "resourceClaimName": pod.name}]
        container["resources"]["claims"] = [{"name": "npu"}]
    elif pod.cards:
        spec["schedulerName"] = "flexnpu-scheduler"
        units = str(pod.requested_units)
        container["resources"] = {
            "requests": {**requests, names.RESOURCE_VNPU: units},
            "limits": {names.RESOURCE_VNPU: units},
        }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod.name, "namespace": NAMESPACE}, "spec": spec}


class Outcomes:
    """A namespace watch that reports each pod's first outcome: ``("bound", node)`` or ``("refused", reason)``."""

    def __init__(self, core: Any, watch_mod: Any) -> None:
        self.core, self.watch_mod = core, watch_mod
        self.seen: dict[str, tuple[str, str]] = {}
        self.events: queue.Queue[str] = queue.Queue()
        self.done = threading.Event()
        self.version = core.list_namespaced_pod(NAMESPACE).metadata.resource_version
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():  # a watch the server ends is resumed from the last version seen
            try:
                for event in self.watch_mod.Watch().stream(
                    self.core.list_namespaced_pod, NAMESPACE, resource_version=self.version, timeout_seconds=60
                ):
                    pod = event["object"]
                    self.version = pod.metadata.resource_version
                    outcome = _outcome(pod)
                    if outcome and pod.metadata.name not in self.seen:
                        self.seen[pod.metadata.name] = outcome
                        self.events.put(pod.metadata.name)
            except ProtocolError:
                continue

    def wait(self, name: str, timeout: float) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while name not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"flexnpu bench dra_placement: pod {name} neither bound nor refused in {timeout} s")
            try:
                self.events.get(timeout=left)
            except queue.Empty:
                continue
        return self.seen[name]


def _outcome(pod: Any) -> tuple[str, str] | None:
    if pod.spec.node_name:
        return "bound", str(pod.spec.node_name)
    for condition in (pod.status.conditions if pod.status else None) or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return "refused", f"{condition.reason}: {condition.message}"
    return None


def run_mode(
    mode: str, nodes: Sequence[NodeState], pods: Sequence[BenchPod], cluster_mod: Any, flexnpu_mod: Any, keep: bool
) -> dict[str, Any]:
    """A fresh control plane, the nodes of ``mode``, the serial replay; the unallocated share at the end."""
    from kubernetes import client as k8s
    from kubernetes import watch as watch_mod

    binary = cluster_mod.binary_path()
    if not binary.is_file():
        raise SystemExit(f"flexnpu bench dra_placement: {binary} missing: run tests/realk8s/build.sh")
    work = Path(tempfile.mkdtemp(prefix=f"bench-dra-placement-{mode}-"))
    controllers = tuple(c for c in cluster_mod.KCM_CONTROLLERS if c != "node-lifecycle-controller")
    plane = cluster_mod.ControlPlane(binary=binary, work=work, controllers=controllers)
    units = UnitsConfig(units_per_card=UNITS_PER_CARD)
    try:
        plane.start(with_node=False)
        config = k8s.Configuration()
        config.host, config.ssl_ca_cert = plane.server, str(plane.pki.ca.cert)
        config.cert_file, config.key_file = str(plane.admin.cert), str(plane.admin.key)
        with k8s.ApiClient(config) as api:
            core: Any = k8s.CoreV1Api(api)
            custom: Any = k8s.CustomObjectsApi(api)
            core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
            hbm = 0
            for index, node in enumerate(nodes):
                body, status, cards = node_bodies(index, node, mode)
                name = body["metadata"]["name"]
                core.create_node(body)
                core.patch_node_status(name, status)
                core.patch_node(name, {"spec": {"taints": []}})  # TaintNodesByCondition's not-ready taint
                hbm = cards[0].hbm_mib
                if mode != "deviceplugin":
                    for slice_body in wanted_slices(cards, name, units):
                        custom.create_cluster_custom_object(GROUP, VERSION, "resourceslices", slice_body)
            if mode != "deviceplugin":
                manifests, _ = flexnpu_mod.render_chart({"mode": "dra"})
                for device_class in (m for m in manifests if m["kind"] == "DeviceClass"):
                    custom.create_cluster_custom_object(GROUP, VERSION, "deviceclasses", device_class)
                if mode == PACKED_SCHEDULER:
                    plane.start_scheduler(PACKED_SCHEDULER, {"profiles": [PACKED_PROFILE]})
            else:
                stack = flexnpu_mod.Flexnpu(plane, api)
                stack.install_rbac_and_crds()
                stack.start_extender()
                stack.start_scheduler()
            _wait_service_account(core)
            # The schedulers learn of the nodes and slices through their informers; give them a moment.
            time.sleep(3)
            outcomes = Outcomes(core, watch_mod)
            started = time.monotonic()
            allocated = failed = 0
            reasons: dict[str, int] = {}
            for pod in pods:
                if pod.cards and mode != "deviceplugin":
                    custom.create_namespaced_custom_object(
                        GROUP, VERSION, NAMESPACE, "resourceclaims", claim_body(pod, hbm)
                    )
                core.create_namespaced_pod(NAMESPACE, pod_body(pod, mode))
                kind, detail = outcomes.wait(pod.name, POD_TIMEOUT_S)
                if kind == "bound" and pod.cards and mode == "deviceplugin":
                    # The device plugin's Allocate handshake (no kubelet here): the extender binds the next pod of
                    # this size to this node only once this one is allocated.
                    notes = {names.ANNOTATION_BIND_PHASE: "allocated"}
                    core.patch_namespaced_pod(pod.name, NAMESPACE, {"metadata": {"annotations": notes}})
                if kind == "bound":
                    allocated += pod.requested_units
                else:
                    failed += 1
                    key = detail.split(":", 1)[0] + (" (gpu)" if pod.cards else " (cpu)")
                    reasons[key] = reasons.get(key, 0) + 1
            seconds = time.monotonic() - started
            outcomes.done.set()
    finally:
        plane.stop()
        if keep:
            print(f"{mode}: component logs in {work / 'logs'}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return _figures(nodes, pods, allocated, failed, reasons, seconds)


def _figures(
    nodes: Sequence[NodeState],
    pods: Sequence[BenchPod],
    allocated: int,
    refused: int,
    reasons: dict[str, int],
    seconds: float,
) -> dict[str, Any]:
    capacity = UNITS_PER_CARD * sum(len(n.cards) for n in nodes)
    return {
        "unallocated_pct_at_100": round(100.0 - 100.0 * allocated / capacity, 3),
        "allocated_units": allocated,
        "capacity_units": capacity,
        "pods": len(pods),
        "refused": refused,
        "refusals": reasons,
        "replay_s": round(seconds, 1),
    }


def run_model(nodes: Sequence[NodeState], pods: Sequence[BenchPod], seed: int = 0) -> dict[str, Any]:
    """The replay of :func:`run_mode` (``deviceplugin``) through the modelled production path: the same Node
    names, 910B3 cards cut into the same units, the same pods in the same order, each submitted once."""
    model_nodes = [
        replace(node, name=f"node-{index:04d}", cards=tuple(replace(c, model=MODEL) for c in node.cards))
        for index, node in enumerate(nodes)
    ]
    order = [trace_pod(pod) for pod in pods]
    started = time.monotonic()
    outcome = replay_production(
        model_nodes, order, DEFAULT_POLICY, seed, (), profile=chart_profile(), units=UNITS_PER_CARD
    )
    seconds = time.monotonic() - started
    allocated = sum(p.requested_units for p, where in zip(pods, outcome.placements, strict=True) if where)
    return _figures(nodes, pods, allocated, outcome.failed, {}, seconds)


def trace_pod(pod: BenchPod) -> TracePod:
    """A replayed pod as the production path takes it: its request in thousandths of a card (openb's U)."""
    if pod.cards == 0:
        request = CPU_ONLY
    else:
        units = pod.cards * OPENB_UNITS if pod.cards > 1 else pod.units * (OPENB_UNITS // UNITS_PER_CARD)
        request = parse_vnpu_request(units, UnitsConfig(units_per_card=OPENB_UNITS))
    demand = PodDemand(request=request, cpu_milli=pod.cpu_milli, host_memory_mib=pod.memory_mib)
    return TracePod(name=pod.name, demand=demand, milli=pod.requested_units * MILLI_PER_UNIT)


def _wait_service_account(core: Any) -> None:
    deadline = time.monotonic() + 60
    while not core.list_namespaced_service_account(NAMESPACE, field_selector="metadata.name=default").items:
        if time.monotonic() > deadline:
            raise SystemExit(f"flexnpu bench dra_placement: no ServiceAccount {NAMESPACE}/default after 60 s")
        time.sleep(0.2)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="flexnpu bench dra_placement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100, help="about this many openb nodes (default 100)")
    parser.add_argument("--trace", default="default", help="openb pod list name (default: default)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated (default {','.join(MODES)})")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of the openb CSV files")
    parser.add_argument(
        "--samples",
        type=int,
        default=1,
        help="independent samples: sample s takes every k-th node and pod from offset s (default 1)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directories (component logs)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error(f"--nodes must be at least 1, got {args.nodes}")
    if not 1 <= args.samples <= 50:
        parser.error(f"--samples must be 1..50, got {args.samples}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        if mode not in MODES:
            parser.error(f"--modes: unknown mode {mode!r} (known: {', '.join(MODES)})")
    data_dir: Path = args.data_dir or default_data_dir()
    for path in (data_dir / NODE_FILE, data_dir / POD_FILE.format(args.trace)):
        if not path.is_file():
            parser.error(f"no such file: {path}")
    all_nodes = load_nodes(data_dir / NODE_FILE)
    trace = load_pods(data_dir / POD_FILE.format(args.trace), all_nodes)
    cluster_mod, flexnpu_mod = _harness() if set(modes) - {"deviceplugin-model"} else (None, None)
    started = time.monotonic()
    samples: list[dict[str, Any]] = []
    for sample in range(args.samples):
        step, nodes = scaled_nodes(all_nodes, args.nodes, sample)
        capacity = UNITS_PER_CARD * sum(len(n.cards) for n in nodes)
        pods = scaled_pods(trace, step, capacity, sample)
        results = {
            mode: run_model(nodes, pods, sample)
            if mode == "deviceplugin-model"
            else run_mode(mode, nodes, pods, cluster_mod, flexnpu_mod, args.keep)
            for mode in modes
        }
        samples.append(
            {"sample": sample, "nodes": len(nodes), "cards": sum(len(n.cards) for n in nodes), "modes": results}
        )
        print(
            f"sample {sample}: {len(nodes)} nodes, "
            + ", ".join(f"{m} {r['unallocated_pct_at_100']:.2f}%" for m, r in results.items()),
            file=sys.stderr,
            flush=True,
        )
    wall = time.monotonic() - started
    rows = []
    summary_modes: dict[str, dict[str, float]] = {}
    for mode in modes:
        values = [x["modes"][mode]["unallocated_pct_at_100"] for x in samples]
        mean = sum(values) / len(values)
        summary_modes[mode] = {"mean": round(mean, 3), "min": min(values), "max": max(values)}
        per_sample = " ".join(f"{v:.2f}" for v in values)
        rows.append([mode, f"{mean:.2f}", f"{min(values):.2f}", f"{max(values):.2f}", per_sample])
    table = format_table(["mode", "unallocated % mean", "min", "max", "per sample"], rows)
    sizes = ", ".join(f"{x['nodes']} nodes/{x['cards']} cards" for x in samples)
    table += (
        f"\n{args.samples} sample(s) of every {step}th node of the openb node list ({sizes}), "
        f"{UNITS_PER_CARD} units a card, trace {args.trace}, arrival 100%; wall {wall:.0f} s; "
        "upstream apiserver + scheduler v1.37.2, no kubelets"
    )
    for x in samples:
        for mode, r in x["modes"].items():
            if r["refusals"]:
                table += f"\nsample {x['sample']} {mode} refusals: " + ", ".join(
                    f"{k} x{v}" for k, v in sorted(r["refusals"].items())
                )
    summary = {"node_step": step, "trace": args.trace, "wall_s": round(wall, 1), "samples": args.samples}
    emit(
        "dra_placement",
        {**summary, "units_per_card": UNITS_PER_CARD, "summary": summary_modes, "per_sample": samples},
        table,
        args,
    )
    return 0
