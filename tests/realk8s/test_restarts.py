"""Issue 10 case 9 on the real components: restarts, one at a time, while pods run.

Two pods hold 6 units each (so two cards). Then, one after the other, the device plugin, flexnpud (its container
process killed: kubelet restarts it), the extender (on the same port: the scheduler's configuration names it),
the operator, the flexnpu-scheduler and the kubelet are restarted. After each: both pods still run as the same
processes, their registrations on flexnpud are the ones they had, a new pod is scheduled, allocated and
registered, and no card holds more than its 10 units.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s
from realk8s_cluster import ControlPlane
from realk8s_cri import process_pid, records_of
from realk8s_flexnpu import INVENTORY, Flexnpu, claim_registration_id, wait_registered
from realk8s_procs import http_ok, wait_for

from flexnpu import names

pytestmark = [pytest.mark.realk8s, pytest.mark.timeout(900)]

IMAGE = "realk8s.local/process:1"
NAMESPACE = "restarts"
UNITS_PER_CARD = 10
STABLE = ("flexnpu_id", "npu", "aicore_alloc", "memory_alloc", "priority")


def pod_body(name: str, units: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "schedulerName": "flexnpu-scheduler",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "command": ["/bin/sleep", "3600"],
                    "resources": {
                        "limits": {names.RESOURCE_VNPU: str(units), names.RESOURCE_VNPU_MEMORY: str(units * 1024)}
                    },
                }
            ],
        },
    }


def running(cluster: ControlPlane, core: Any, name: str, namespace: str = NAMESPACE) -> Any:
    def phase() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase == "Running" else None

    return wait_for(f"pod {name} Running", phase, 180, watch=cluster.procs, interval=0.5)


def pid_of(cluster: ControlPlane, name: str) -> int:
    [record] = records_of(cluster.cri_records, NAMESPACE, name)
    pid: int = wait_for(f"process of {name}", lambda: process_pid(cluster.cri_records, record), 60)
    return pid


def stop_proc(cluster: ControlPlane, name: str) -> None:
    [proc] = [p for p in cluster.procs if p.name == name]
    proc.stop()
    cluster.procs.remove(proc)


def restart_flexnpud(stack: Flexnpu) -> None:
    """Kill flexnpud's container process; kubelet starts the container again (restartPolicy Always)."""
    pod = f"flexnpu-node-{stack.node.name}"
    [record] = records_of(stack.node.cri_records, stack.namespace, pod)
    pid = process_pid(stack.node.cri_records, record)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    url = f"http://127.0.0.1:{stack.daemon_port}/service/health"

    def restarted() -> bool | None:
        records = records_of(stack.node.cri_records, stack.namespace, pod)
        return True if len(records) > 1 and http_ok(url) else None

    wait_for("flexnpud restarted by kubelet", restarted, 120, watch=stack.cluster.procs, interval=0.5)


def restart_device_plugin(stack: Flexnpu) -> None:
    """A new device plugin process, once it has registered with kubelet again. A pod kubelet admits before that
    fails (UnexpectedAdmissionError: kubelet holds the old plugin's devices unhealthy until the new one lists
    them), which is kubelet's behaviour during any device plugin restart, not a flexnpu one."""
    line = "registered huawei.com/vnpu with kubelet"
    [old] = [p for p in stack.cluster.procs if p.name == "device-plugin"]
    seen = old.log.read_text(errors="replace").count(line)
    stop_proc(stack.cluster, "device-plugin")
    proc = stack.start_device_plugin(INVENTORY)

    def registered() -> bool | None:
        return True if proc.log.read_text(errors="replace").count(line) > seen else None

    wait_for("device plugin registered with kubelet", registered, 60, watch=[proc], interval=0.2)


def card_units(core: Any) -> dict[int, int]:
    """Units assigned per card index over every running or pending flexnpu pod of the cluster."""
    out: dict[int, int] = {}
    for pod in core.list_pod_for_all_namespaces().items:
        notes = pod.metadata.annotations or {}
        live = pod.status.phase not in ("Succeeded", "Failed")
        if live and pod.metadata.deletion_timestamp is None and names.ANNOTATION_ASSIGNED in notes:
            for card in json.loads(notes[names.ANNOTATION_ASSIGNED]):
                out[card["index"]] = out.get(card["index"], 0) + card["units"]
    return out


def test_restarting_each_component_disturbs_no_running_pod(
    flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any, api: k8s.ApiClient
) -> None:
    stack = flexnpu_stack
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
    wait_for("ServiceAccount", lambda: core.read_namespaced_service_account("default", NAMESPACE), 60, interval=0.5)
    steady = ("steady-a", "steady-b")
    for name in steady:
        core.create_namespaced_pod(NAMESPACE, pod_body(name, 6))
    try:
        pods = {name: running(cluster, core, name) for name in steady}
        pids = {name: pid_of(cluster, name) for name in steady}
        ids = {
            name: claim_registration_id(wait_registered(stack, NAMESPACE, pod.metadata.uid))
            for name, pod in pods.items()
        }
        before = {name: {k: stack.registrations()[fid][k] for k in STABLE} for name, fid in ids.items()}

        def restart(name: str, start: Callable[[], object]) -> Callable[[], None]:
            def run() -> None:
                stop_proc(cluster, name)
                start()

            return run

        restarts: list[tuple[str, Callable[[], object]]] = [
            ("device-plugin", lambda: restart_device_plugin(stack)),
            ("flexnpud", lambda: restart_flexnpud(stack)),
            ("extender", restart("extender", lambda: stack.start_extender(stack.extender_port))),
            ("operator", restart("operator", stack.start_operator)),
            ("flexnpu-scheduler", restart("flexnpu-scheduler", stack.start_scheduler)),
            ("kubelet", lambda: cluster.restart_kubelet(cluster.node)),
        ]

        def advertised() -> bool | None:
            allocatable = core.read_node(cluster.node_name).status.allocatable or {}
            return True if allocatable.get(names.RESOURCE_VNPU) == str(len(INVENTORY) * UNITS_PER_CARD) else None

        for component, restart_it in restarts:
            restart_it()
            # A pod created while the node still reports the old plugin's units as gone is refused by
            # NodeResourcesFit and waits for the scheduler's queue flush: wait for the node to advertise them again.
            wait_for(
                f"units advertised after the {component} restart", advertised, 120, watch=cluster.procs, interval=0.5
            )
            probe = f"probe-{component}"
            core.create_namespaced_pod(NAMESPACE, pod_body(probe, 3))
            pod = running(cluster, core, probe)
            wait_registered(stack, NAMESPACE, pod.metadata.uid)
            assert all(units <= UNITS_PER_CARD for units in card_units(core).values()), (component, card_units(core))
            for name in steady:
                assert core.read_namespaced_pod(name, NAMESPACE).status.phase == "Running", (component, name)
                assert pid_of(cluster, name) == pids[name] and os.path.exists(f"/proc/{pids[name]}"), (component, name)
                registration = stack.registrations().get(ids[name])
                assert registration is not None, f"after the {component} restart {name} lost its registration"
                assert {k: registration[k] for k in STABLE} == before[name], (component, name)
            core.delete_namespaced_pod(probe, NAMESPACE, grace_period_seconds=1)
    finally:
        core.delete_namespace(NAMESPACE)

        def gone() -> bool | None:
            return None if core.list_namespaced_pod(NAMESPACE).items else True

        wait_for(f"pods of {NAMESPACE} gone", gone, 120, interval=0.5)
