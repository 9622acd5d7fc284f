"""``flexnpu bench operator_real``: create-to-Registered of VNpuClaims on the real API server (DESIGN.md section 13).

The kmock twin is ``flexnpu bench operator``; this one runs upstream etcd, kube-apiserver and
kube-controller-manager (v1.37.2, the realk8s harness of the source checkout, built by tests/realk8s/build.sh).
The chart is rendered (units.oversubscription=2, node.daemon.devices=sim:910B3x8, node.hostNetwork=false) and its
CRDs, RBAC and daemon-token Secret applied; the operator runs as the chart's Deployment runs it (its args and env,
a token of its ServiceAccount, the daemon token file).

Nodes: N (default 10) simulated nodes without kubelets, one real flexnpud process each (the chart's flexnpud.conf,
eight simulated 910B3 cards, bearer token required), and for each a Pod object standing for the node DaemonSet's
pod on that node (the DaemonSet's labels, the port named ``daemon``, status Running/Ready with pod IP 127.0.0.1,
written with the admin credential), since that is how the operator finds a node's daemon. No Node objects: nothing
here reads them. Oversubscription 2 lets 100 one-unit claims share a node's eight cards (10 units each).

Before the run one warm-up claim per node is registered and deleted (kopf's watches started, connections to every
daemon open). Then C claims (default 1,000; one unit, 512 MiB, spread round-robin over nodes and cards) are created
through the API from several client threads, all at once (``--rate 0``) or paced. The meter is the bench's own
watch of the claims on the API server: a claim's latency runs from the start of its create call to the watch event
that first shows ``status.phase: Registered`` (the operator does not feed it). Claims/s is C over the time from the
first create to the last such event. The daemons are asked at the end how many registrations they hold.

``--made-by extender`` creates each claim as the extender does at bind: with the operator's deregister finalizer
already on it (the operator registers it on the first event); ``user`` (default) as a person writes one, without
(kopf adds the finalizer first and registers on the event that follows).
"""

from __future__ import annotations

import argparse
import configparser
import io
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from flexnpu import names
from flexnpu.bench._realk8s import Harness, Watcher, admin_client, cpu_seconds, harness, make_namespace, percentile
from flexnpu.bench.common import add_common_args, emit, format_table
from flexnpu.waiting import free_port

NAME = "operator_real"
NAMESPACE = "bench"
CARDS_PER_NODE = 8
OVERSUBSCRIPTION = 2
TARGET_P99_S = 1.0
CHART_VALUES: dict[str, Any] = {
    "node": {"hostNetwork": False, "daemon": {"devices": f"sim:910B3x{CARDS_PER_NODE}"}},
    "units": {"oversubscription": OVERSUBSCRIPTION},
}
# No node-lifecycle controller: these nodes have no kubelet. The garbage collector deletes the warm-up claims.
CONTROLLERS = ("garbage-collector-controller", "namespace-controller", "serviceaccount-controller",
               "serviceaccount-token-controller", "root-ca-certificate-publisher-controller")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"flexnpu bench {NAME}", description=__doc__.splitlines()[0])
    p.add_argument("--claims", type=int, default=1000, help="claims to create (default 1000)")
    p.add_argument("--nodes", type=int, default=10, help="simulated nodes, one flexnpud process each (default 10)")
    p.add_argument("--threads", type=int, default=8, help="client threads creating claims (default 8)")
    p.add_argument("--rate", type=float, default=0.0, help="claims created per second; 0: all at once (default)")
    p.add_argument(
        "--made-by",
        choices=("user", "extender"),
        default="user",
        help="claims as a user writes them (no finalizer) or as the extender does (finalizer set); default user",
    )
    p.add_argument(
        "--at-rest",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="then, with every claim registered, measure each process's CPU for this long (the operator's re-checks "
        "of every claim, every resync interval: 30 s in the chart); default 0: not measured",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (default 600)")
    p.add_argument("--quick", action="store_true", help="100 claims on 2 nodes")
    p.add_argument("--workdir", type=Path, default=None, help="work directory (kept; default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory (component logs)")
    add_common_args(p)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.quick:
        args.claims, args.nodes = 100, 2
    if args.claims < 1 or args.nodes < 1 or args.threads < 1 or args.rate < 0 or not 0 <= args.at_rest <= 3600:
        print(
            f"flexnpu bench {NAME}: --claims, --nodes and --threads must be >= 1, --rate >= 0, --at-rest in 0..3600",
            file=sys.stderr,
        )
        return 2
    h = harness(NAME)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-operator-real-"))
    work.mkdir(parents=True, exist_ok=True)
    plane = h.cluster.ControlPlane(binary=h.cluster.binary_path(), work=work, controllers=CONTROLLERS)
    try:
        result = run(h, plane, args)
    finally:
        plane.stop()
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.keep or args.workdir is not None:
        result["logs"] = str(work / "logs")
    emit(NAME, result, table(result), args)
    return 0 if result["registered"] == result["claims"] else 1


@dataclass
class Node:
    """One simulated node: its name and its flexnpud's port."""

    name: str
    port: int


def run(h: Harness, plane: Any, args: argparse.Namespace) -> dict[str, Any]:
    from kubernetes import client as k8s

    started = time.monotonic()
    plane.start(with_node=False)
    with admin_client(plane, pool=args.threads * 2 + 4) as api:
        core: Any = k8s.CoreV1Api(api)
        custom: Any = k8s.CustomObjectsApi(api)
        stack = h.flexnpu.Flexnpu(plane, api, CHART_VALUES)
        stack.install_rbac_and_crds()
        stack.install_daemon_token()
        nodes = [Node(f"bench-node-{i:02d}", free_port()) for i in range(args.nodes)]
        for node in nodes:
            start_daemon(h, stack, node)
            core.create_namespaced_pod(stack.namespace, daemon_pod(h, stack, node))
            core.patch_namespaced_pod_status(f"flexnpu-node-{node.name}", stack.namespace, RUNNING_STATUS)
        stack.start_operator()
        make_namespace(h, plane, core, NAMESPACE, service_account=False)
        meter = Meter()
        with Watcher(custom.list_namespaced_custom_object, claim_path(), meter.observe):
            warm_up(h, plane, custom, meter, nodes)
            setup_s = time.monotonic() - started
            print(f"control plane, {args.nodes} daemons and the operator in {setup_s:.0f} s", file=sys.stderr)
            groups = {proc.name: proc.pgid for proc in plane.procs}
            cpu_before = cpu_seconds(groups)
            first = time.monotonic()
            create_claims(custom, meter, nodes, args)
            created_s = time.monotonic() - first
            meter.wait(args.claims, args.timeout)
            cpu_after = cpu_seconds(groups)
            at_rest = cpu_at_rest(groups, args.at_rest) if args.at_rest else {}
        held = sum(len(daemon_registrations(stack, node)) for node in nodes)
    return {
        **figures(args, meter, first, held, setup_s),
        "creation_seconds": round(created_s, 3),
        # from the first create to the last Registered
        "cpu_ms_per_claim": cpu_by_component(cpu_before, cpu_after, 1000 / args.claims),
        **({"at_rest_seconds": args.at_rest, "at_rest_cpu_percent": at_rest} if args.at_rest else {}),
    }


def cpu_at_rest(groups: dict[str, int], seconds: float) -> dict[str, float]:
    """Percent of a core each process used over ``seconds`` with nothing created."""
    before = cpu_seconds(groups)
    time.sleep(seconds)
    return cpu_by_component(before, cpu_seconds(groups), 100 / seconds)


def cpu_by_component(before: dict[str, float], after: dict[str, float], scale: float) -> dict[str, float]:
    """CPU seconds used between two readings, times ``scale``, by process, the flexnpud processes summed."""
    used: dict[str, float] = {}
    for name in after:
        key = "flexnpud (all)" if name.startswith("flexnpud") else name
        used[key] = used.get(key, 0.0) + (after[name] - before[name]) * scale
    return {k: round(v, 2) for k, v in sorted(used.items())}


RUNNING_STATUS = {
    "status": {
        "phase": "Running",
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "hostIP": "127.0.0.1",
        "conditions": [{"type": "Ready", "status": "True"}],
    }
}


def daemon_config(stack: Any, node: Node) -> str:
    """The chart's flexnpud.conf as the harness adjusts it, with this node's port, state and socket directories."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(stack.daemon_config(node.port))
    base = stack.work / node.name
    for sub in ("state", "run"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    parser["flexnpu"].update({"persistent_file_dir": str(base / "state"), "socket_dir": str(base / "run")})
    out = io.StringIO()
    parser.write(out)
    return out.getvalue()


def start_daemon(h: Harness, stack: Any, node: Node) -> None:
    """flexnpud with the chart's container args and this node's config; returns once /service/health answers."""
    template = h.flexnpu.only(stack.manifests, "DaemonSet", "node")["spec"]["template"]
    [container] = [c for c in template["spec"]["containers"] if c["name"] == "flexnpud"]
    config = stack.work / f"{node.name}.conf"
    config.write_text(daemon_config(stack, node), encoding="utf-8")
    args = list(container["args"])
    args[args.index("--config") + 1] = str(config)
    proc = stack.cluster.spawn(f"flexnpud-{node.name}", [stack.flexnpu, *args])
    url = f"http://127.0.0.1:{node.port}/service/health"
    h.procs.wait_for(f"flexnpud of {node.name}", lambda: h.procs.http_ok(url), 60, watch=[proc])


def daemon_pod(h: Harness, stack: Any, node: Node) -> dict[str, Any]:
    """The node DaemonSet's pod on ``node`` as the operator looks for it: labels, container port ``daemon``."""
    template = h.flexnpu.only(stack.manifests, "DaemonSet", "node")["spec"]["template"]
    [container] = [c for c in template["spec"]["containers"] if c["name"] == "flexnpud"]
    [port] = [p for p in container["ports"] if p["name"] == "daemon"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"flexnpu-node-{node.name}", "labels": template["metadata"]["labels"]},
        "spec": {
            "nodeName": node.name,
            "automountServiceAccountToken": False,
            "containers": [
                {"name": "flexnpud", "image": container["image"], "ports": [{**port, "containerPort": node.port}]}
            ],
        },
    }


def daemon_registrations(stack: Any, node: Node) -> list[Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{node.port}/device/flexnpu-info",
        headers={"Authorization": f"Bearer {stack.token_file.read_text(encoding='utf-8').strip()}"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        registrations: list[Any] = json.load(resp)["registrations"]
        return registrations


# -- the claims and the meter -----------------------------------------------------------------------------------


def claim_path() -> tuple[str, str, str, str]:
    return (names.CRD_GROUP, names.CRD_VERSION, NAMESPACE, names.CRD_PLURAL)


def claim_body(name: str, node: str, npu: int, made_by: str = "user") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if made_by == "extender":
        meta["finalizers"] = [names.CLAIM_FINALIZER]
    return {
        "apiVersion": f"{names.CRD_GROUP}/{names.CRD_VERSION}",
        "kind": names.CRD_KIND,
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "npu": npu,
            "chip": 0,
            "aicoreAlloc": 1,
            "memoryMiB": 512,
            "priority": "normal",
            "entity": name,
        },
    }


class Meter:
    """Create times (set by the client) and first-Registered times (from the watch), by claim name."""

    def __init__(self) -> None:
        self.created: dict[str, float] = {}
        self.registered: dict[str, float] = {}
        self._lock = threading.Condition()

    def mark_created(self, name: str) -> None:
        with self._lock:
            self.created[name] = time.monotonic()

    def observe(self, claim: Any, arrived: float) -> None:
        name = str(claim["metadata"]["name"])
        with self._lock:
            if (claim.get("status") or {}).get("phase") == "Registered":
                self.registered.setdefault(name, arrived)
            self._lock.notify_all()

    def wait(self, count: int, timeout: float, prefix: str = "claim-") -> int:
        """Until ``count`` claims named ``prefix``... are Registered (or timeout); the number that are."""

        def done() -> int:
            return sum(1 for n in self.registered if n.startswith(prefix))

        with self._lock:
            self._lock.wait_for(lambda: done() >= count, timeout=timeout)
            return done()


def warm_up(h: Harness, plane: Any, custom: Any, meter: Meter, nodes: list[Node]) -> None:
    """One claim per node registered and deleted: kopf's watches run and each daemon has been called once."""
    for i, node in enumerate(nodes):
        custom.create_namespaced_custom_object(*claim_path(), claim_body(f"warm-up-{i}", node.name, 0))
    if meter.wait(len(nodes), 120, prefix="warm-up-") < len(nodes):
        raise SystemExit(f"flexnpu bench {NAME}: the operator registered no warm-up claim in 120 s (see its log)")
    for i in range(len(nodes)):
        custom.delete_namespaced_custom_object(*claim_path(), f"warm-up-{i}")

    def gone() -> bool | None:
        listed = custom.list_namespaced_custom_object(*claim_path())
        return True if not listed["items"] else None

    h.procs.wait_for("warm-up claims deregistered and deleted", gone, 120, watch=plane.procs, interval=0.1)


def create_claims(custom: Any, meter: Meter, nodes: list[Node], args: argparse.Namespace) -> None:
    start = time.monotonic()

    def create(i: int) -> None:
        if args.rate > 0:
            delay = start + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        name = f"claim-{i:05d}"
        body = claim_body(name, nodes[i % len(nodes)].name, (i // len(nodes)) % CARDS_PER_NODE, args.made_by)
        meter.mark_created(name)
        custom.create_namespaced_custom_object(*claim_path(), body)

    in_parallel([partial(create, i) for i in range(args.claims)], args.threads)


def in_parallel(calls: list[Callable[[], object]], threads: int) -> None:
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()


def figures(args: argparse.Namespace, meter: Meter, first: float, held: int, setup_s: float) -> dict[str, Any]:
    measured = {n: t for n, t in meter.registered.items() if n in meter.created}
    latencies = [measured[n] - meter.created[n] for n in measured]
    span = max((max(measured.values()) - first) if measured else 0.0, 1e-9)
    return {
        "claims": args.claims,
        "nodes": args.nodes,
        "daemon_processes": args.nodes,
        "cards_per_node": CARDS_PER_NODE,
        "oversubscription": OVERSUBSCRIPTION,
        "client_threads": args.threads,
        "rate": args.rate or "burst",
        "made_by": args.made_by,
        "registered": len(measured),
        "held_by_daemons": held,
        "seconds": round(span, 3),
        "claims_per_second": round(len(measured) / span, 1),
        "latency_p50_s": round(percentile(latencies, 0.50), 3),
        "latency_p99_s": round(percentile(latencies, 0.99), 3),
        "latency_max_s": round(max(latencies, default=0.0), 3),
        "latency_mean_s": round(statistics.fmean(latencies) if latencies else 0.0, 3),
        "target_p99_s": TARGET_P99_S,
        "setup_s": round(setup_s, 1),
        "meter": "bench's watch of the claims on kube-apiserver: create call start -> first event showing Registered",
        "components": "upstream etcd + kube-apiserver + kube-controller-manager v1.37.2; operator and flexnpud as "
        "processes with the chart's args",
    }


def table(result: dict[str, Any]) -> str:
    rows: list[list[object]] = [
        [
            "claims / nodes (flexnpud processes)",
            f"{result['claims']} / {result['nodes']} ({result['daemon_processes']})",
        ],
        ["creation", f"{result['rate']} claims/s" if result["rate"] != "burst" else "burst (all at once)"],
        ["claims made as", f"{result['made_by']} ({'finalizer set' if result['made_by'] == 'extender' else 'none'})"],
        ["client threads; seconds to create them all", f"{result['client_threads']}; {result['creation_seconds']}"],
        ["registered (held by daemons)", f"{result['registered']} ({result['held_by_daemons']})"],
        ["claims registered per second", result["claims_per_second"]],
        ["create-to-Registered p50 (s)", result["latency_p50_s"]],
        [f"create-to-Registered p99 (s) [target <= {TARGET_P99_S:g}]", result["latency_p99_s"]],
        ["create-to-Registered max (s)", result["latency_max_s"]],
    ]
    rows += [[f"CPU ms per claim: {name}", ms] for name, ms in result.get("cpu_ms_per_claim", {}).items()]
    rest = result.get("at_rest_cpu_percent", {})
    rows += [[f"at rest {result.get('at_rest_seconds', 0):g} s, % of a core: {name}", v] for name, v in rest.items()]
    text = format_table(["operator on the real API server", "value"], rows)
    text += "\n(upstream kube-apiserver v1.37.2; metered by the bench's watch, not by the operator)"
    if "logs" in result:
        text += f"\ncomponent logs: {result['logs']}"
    return text
