"""``flexnpu bench scheduler``: the real kube-scheduler with the extender against the same scheduler without it.

Real processes, no NPU: the realk8s harness's upstream etcd, kube-apiserver and kube-scheduler (v1.37.2, built by
``tests/realk8s/build.sh``; this benchmark needs a source checkout, where that harness lives), and the extender
as the chart runs it (its args, its ServiceAccount token). N Node objects (default 5,000) are written directly,
without kubelets: each advertises C cards (default 8) x 10 ``huawei.com/vnpu`` units, the device plugin's
inventory annotation, and the same count of a plain extended resource ``flexnpu.io/bench-plain``.

Two schedulers run from the chart's KubeSchedulerConfiguration: ``flexnpu-scheduler`` with the extender (filter and
bind over HTTP, prioritize too where the chart names it; every node scored: ``percentageOfNodesToScore: 100``), and
``plain-scheduler``, the same file with the extender removed. P pods (default 1,000) go to each in turn: the
extender's pods request vNPU units (1, 2, 3, 5 units or one whole card), the plain ones the same counts of the plain
resource. The client creates the pods from several threads and watches them; a pod's latency is from the end of its
create call to the watch event that shows it bound (``spec.nodeName``), the throughput is pods over the time from
the first create to the last bind. With no kubelets, the client also does the device plugin's one write per pod: as
soon as the watch shows an extender pod bound it sets its handshake to ``allocated``, as the plugin does after
kubelet's Allocate (the extender binds a second pod of the same first size to a node only after that: kubelet's
Allocate names no pod). The figures are the scheduler's and the API server's on this machine, with the client in the
loop for both modes alike.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from urllib3.exceptions import ProtocolError

from flexnpu import names
from flexnpu.annotations import Inventory, encode_inventory
from flexnpu.bench._realk8s import cpu_seconds
from flexnpu.bench.common import add_common_args, emit, format_table
from flexnpu.cards import Card

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "tests" / "realk8s"
PLAIN_RESOURCE = "flexnpu.io/bench-plain"
NAMESPACE = "bench"
SHAPES = (1, 2, 3, 5, 10)
UNITS_PER_CARD = 10


def _harness() -> tuple[Any, Any]:
    """The realk8s harness modules (tests/realk8s), imported from the source checkout."""
    if not (HARNESS / "realk8s_cluster.py").is_file():
        raise SystemExit(f"flexnpu bench scheduler: needs a source checkout ({HARNESS} is missing)")
    sys.path.insert(0, str(HARNESS))
    return importlib.import_module("realk8s_cluster"), importlib.import_module("realk8s_flexnpu")


def node_body(index: int, cards: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Node and its status: ``cards`` 910B3 cards as units, the inventory annotation, the plain resource."""
    name = f"bench-node-{index:05d}"
    inventory = Inventory(cards=tuple(Card.of_model("910B3", i, f"{name}-c{i}") for i in range(cards)))
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name},
            "annotations": {names.ANNOTATION_INVENTORY: encode_inventory(inventory)},
        },
    }
    resources = {
        "cpu": "192",
        "memory": "1536Gi",
        "pods": "110",
        names.RESOURCE_VNPU: str(cards * UNITS_PER_CARD),
        PLAIN_RESOURCE: str(cards * UNITS_PER_CARD),
    }
    status = {
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Bench", "message": "no kubelet"}],
        }
    }
    return body, status


def pod_body(index: int, scheduler: str, resource: str) -> dict[str, Any]:
    units = SHAPES[index % len(SHAPES)]
    limits = {resource: str(units)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{scheduler}-{index:05d}", "namespace": NAMESPACE},
        "spec": {
            "schedulerName": scheduler,
            "automountServiceAccountToken": False,
            "containers": [
                {"name": "main", "image": "bench.local/none:1", "resources": {"limits": limits, "requests": limits}}
            ],
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def accepted(response: Any, what: str) -> None:
    """A raw answer (the client builds no models of it: the meter's CPU is on the machine it measures): read,
    its connection given back, and a SystemExit unless the API server accepted the call."""
    body = response.data
    response.release_conn()
    if not 200 <= response.status < 300:
        raise SystemExit(f"flexnpu bench scheduler: {what}: HTTP {response.status}: {body[:300]!r}")


def in_parallel(calls: list[Callable[[], object]], threads: int) -> None:
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()


def run_mode(
    core: Any, watch_mod: Any, scheduler: str, resource: str, pods: int, threads: int, groups: dict[str, int]
) -> dict[str, Any]:
    """Create ``pods`` pods for ``scheduler`` and time each one's bind, as the API server reports it."""
    cpu_before = cpu_seconds(groups)
    created: dict[str, float] = {}
    bound: dict[str, float] = {}
    lock = threading.Lock()
    done = threading.Event()
    prefix = f"{scheduler}-"
    ready = threading.Event()

    def watcher() -> None:
        version = core.list_namespaced_pod(NAMESPACE).metadata.resource_version
        ready.set()
        while not done.is_set():  # a watch the server ends is resumed from the last version seen
            w = watch_mod.Watch()
            try:
                # Plain dicts, not the client's models (see accepted)
                stream = w.stream(core.list_namespaced_pod, NAMESPACE, resource_version=version, deserialize=False)
                for event in stream:
                    pod = event["object"]
                    meta = pod.get("metadata") or {}
                    version = meta.get("resourceVersion") or version
                    name = str(meta.get("name") or "")
                    if name.startswith(prefix) and (pod.get("spec") or {}).get("nodeName"):
                        on_bound(pod)
                        with lock:
                            bound.setdefault(name, time.monotonic())
                            if len(bound) >= pods:
                                done.set()
                                w.stop()
            except ProtocolError:  # the server closed the stream: watch again from ``version``
                continue

    allocator = ThreadPoolExecutor(threads)
    allocated: set[str] = set()

    def allocate(name: str) -> None:
        """The device plugin's write after kubelet's Allocate (no kubelet here): the handshake ends."""
        patch = {"metadata": {"annotations": {names.ANNOTATION_BIND_PHASE: "allocated"}}}
        accepted(core.patch_namespaced_pod(name, NAMESPACE, patch, _preload_content=False), f"patch pod {name}")

    def on_bound(pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        notes = meta.get("annotations") or {}
        if notes.get(names.ANNOTATION_BIND_PHASE) == "allocating" and meta["name"] not in allocated:
            allocated.add(meta["name"])
            allocator.submit(allocate, meta["name"])

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    ready.wait(30)

    def create(index: int) -> None:
        body = pod_body(index, scheduler, resource)
        accepted(core.create_namespaced_pod(NAMESPACE, body, _preload_content=False), "create pod")
        with lock:
            created[body["metadata"]["name"]] = time.monotonic()

    first = time.monotonic()
    in_parallel([partial(create, i) for i in range(pods)], threads)
    finished = done.wait(max(120.0, pods * 0.5))
    allocator.shutdown(wait=True)
    if not finished:
        raise SystemExit(f"flexnpu bench scheduler: {scheduler} bound {len(bound)} of {pods} pods in time")
    cpu_after = cpu_seconds(groups)
    last = max(bound.values())
    latencies = [max(0.0, bound[n] - created[n]) * 1000 for n in created]
    return {
        "pods": pods,
        "pods_per_s": pods / (last - first),
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "seconds": last - first,
        # CPU milliseconds per pod, by process, over the whole phase (every process runs in both phases)
        "cpu_ms_per_pod": {k: round((cpu_after[k] - cpu_before[k]) * 1000 / pods, 2) for k in cpu_after},
    }


def extender_calls(port: int) -> dict[str, float]:
    """The extender's own counts (its /metrics): requests by verb, binds by outcome, Events sent."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    calls: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "flexnpu_extender_requests_total":
                key = f"{sample.labels['verb']} {sample.labels['status']}"
            elif sample.name == "flexnpu_extender_binds_total":
                key = f"bind {sample.labels['outcome']}"
            elif sample.name == "flexnpu_extender_events_total":
                key = "events"
            elif sample.name in ("flexnpu_extender_request_seconds_sum", "flexnpu_extender_request_seconds_count"):
                key = f"{sample.labels['verb']} {sample.name.rsplit('_', 1)[1]}"
            else:
                continue
            calls[key] = calls.get(key, 0.0) + sample.value
    for verb in ("filter", "prioritize", "bind"):  # mean time inside the extender, without the network
        total, count = calls.pop(f"{verb} sum", 0.0), calls.pop(f"{verb} count", 0.0)
        if count:
            calls[f"{verb} mean ms"] = round(total * 1000 / count, 2)
    return calls


def settled_extender_calls(port: int, pods: int, timeout_s: float = 30.0) -> dict[str, float]:
    """The extender's counts once every pod's bind has answered.

    The watch sees a pod bound as soon as the extender's Binding write lands, while the extender may still be
    finishing that bind (its counters move when the answer goes back): read again until the binds answered reach
    the pods bound, or the timeout passes (then the counts are what they are, and the caller sees the gap)."""
    deadline = time.monotonic() + timeout_s
    while True:
        calls = extender_calls(port)
        answered = sum(v for k, v in calls.items() if k.startswith("bind ") and not k.endswith(" ms"))
        if answered >= 2 * pods or time.monotonic() > deadline:  # "bind 200" and "bind <outcome>" for each pod
            return calls
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="flexnpu bench scheduler", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5000, help="Node objects (default 5000)")
    parser.add_argument("--cards", type=int, default=8, help="cards per node (default 8)")
    parser.add_argument("--pods", type=int, default=1000, help="pods per mode (default 1000)")
    parser.add_argument("--threads", type=int, default=8, help="client threads creating objects (default 8)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (component logs)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    for flag in ("nodes", "cards", "pods", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    cluster_mod, flexnpu_mod = _harness()
    from kubernetes import client as k8s
    from kubernetes import watch as watch_mod

    binary = cluster_mod.binary_path()
    if not binary.is_file():
        raise SystemExit(f"flexnpu bench scheduler: {binary} missing: run tests/realk8s/build.sh")
    work = Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
    # No node-lifecycle controller: the nodes have no kubelet, and it would taint them unreachable.
    controllers = tuple(c for c in cluster_mod.KCM_CONTROLLERS if c != "node-lifecycle-controller")
    plane = cluster_mod.ControlPlane(binary=binary, work=work, controllers=controllers)
    try:
        t0 = time.monotonic()
        plane.start(with_node=False)
        config = k8s.Configuration()
        config.host, config.ssl_ca_cert = plane.server, str(plane.pki.ca.cert)
        config.cert_file, config.key_file = str(plane.admin.cert), str(plane.admin.key)
        config.connection_pool_maxsize = args.threads * 2
        with k8s.ApiClient(config) as api:
            core: Any = k8s.CoreV1Api(api)
            core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
            deadline = time.monotonic() + 60
            while not core.list_namespaced_service_account(NAMESPACE, field_selector="metadata.name=default").items:
                if time.monotonic() > deadline:
                    raise SystemExit("flexnpu bench scheduler: no ServiceAccount bench/default after 60 s")
                time.sleep(0.2)

            def add_node(index: int) -> None:
                body, status = node_body(index, args.cards)
                core.create_node(body)
                core.patch_node_status(body["metadata"]["name"], status)
                # The API server's TaintNodesByCondition admission taints a new Node not-ready; with no kubelet and
                # no node-lifecycle controller nothing would lift it.
                core.patch_node(body["metadata"]["name"], {"spec": {"taints": []}})

            in_parallel([partial(add_node, i) for i in range(args.nodes)], args.threads)
            setup_s = time.monotonic() - t0
            print(f"control plane and {args.nodes} nodes in {setup_s:.0f} s", file=sys.stderr)
            stack = flexnpu_mod.Flexnpu(plane, api)
            stack.install_rbac_and_crds()
            stack.start_extender()
            chart_config = stack.scheduler_config()
            stack.start_scheduler()
            plain = {k: v for k, v in chart_config.items() if k != "extenders"}
            plain["profiles"] = [{"schedulerName": "plain-scheduler"}]
            plain["leaderElection"] = {"leaderElect": False}
            plane.start_scheduler("plain-scheduler", plain, connection_only=True)
            groups = {proc.name: proc.pgid for proc in plane.procs}
            results = {
                "plain": run_mode(core, watch_mod, "plain-scheduler", PLAIN_RESOURCE, args.pods, args.threads, groups),
                "extender": run_mode(
                    core, watch_mod, "flexnpu-scheduler", names.RESOURCE_VNPU, args.pods, args.threads, groups
                ),
            }
            calls = settled_extender_calls(stack.extender_port, args.pods)
    finally:
        plane.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    ratio = results["extender"]["pods_per_s"] / results["plain"]["pods_per_s"]
    rows = [[mode, r["pods"], r["pods_per_s"], r["p50_ms"], r["p99_ms"], r["seconds"]] for mode, r in results.items()]
    table = format_table(["scheduler", "pods", "pods/s", "p50 ms", "p99 ms", "seconds"], rows)
    cpu_names = sorted(results["extender"]["cpu_ms_per_pod"])
    cpu_rows = [[n] + [results[m]["cpu_ms_per_pod"][n] for m in results] for n in cpu_names]
    table += "\nCPU ms per pod, by process:\n" + format_table(["process", *results], cpu_rows)
    table += "\nextender: " + ", ".join(f"{k}: {v:g}" for k, v in sorted(calls.items()))
    table += f"\nwith the extender / without: {ratio:.2f} of the throughput (goal >= 0.80)"
    table += f"\n({args.nodes} nodes x {args.cards} cards, upstream apiserver + scheduler v1.37.2, real processes)"
    if args.keep:
        table += f"\ncomponent logs: {work / 'logs'}"
    emit(
        "scheduler",
        {"nodes": args.nodes, "cards": args.cards, "setup_s": setup_s, "ratio": ratio, **results, "calls": calls},
        table,
        args,
    )
    return 0
