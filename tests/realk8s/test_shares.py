"""Issue 10 case 2 on the real components: achieved shares through the runtime in device-plugin mode.

Two pods of 2 and 8 units scheduled by flexnpu-scheduler with the extender onto one card, admitted by the real
kubelet (Allocate: the shim directory read-only, the registration's own slot read-write, the interposer and a
read-only /etc/ld.so.preload, all bind-mounted by the suite's CRI in the container's mount namespace). Each runs a
C program on the fake AscendCL that knows nothing of flexnpu; the device time each got is read from the fake
device's kernel log, which nothing in the runtime reads. Without the runtime these two pods split it 1:1.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
from kubernetes import client as k8s
from realk8s_cluster import ControlPlane
from realk8s_cri import container_log, process_pid, records_of
from realk8s_flexnpu import Flexnpu, claim_registration_id, wait_registered
from realk8s_procs import wait_for
from realk8s_tenants import SATURATING, device_time, enforcement_problems, open_gate, workload_container

from flexnpu import names

pytestmark = [pytest.mark.realk8s, pytest.mark.timeout(600)]

IMAGE = "realk8s.local/process:1"
NAMESPACE = "default"


def workload_pod(stack: Flexnpu, name: str, units: int, argv: list[str]) -> dict[str, Any]:
    command, env = workload_container(stack.native, stack.work / "fakedev-shares", argv, stack.work / "start-shares")
    limits = {names.RESOURCE_VNPU: str(units), names.RESOURCE_VNPU_MEMORY: "4096"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "schedulerName": "flexnpu-scheduler",
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "command": command,
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                    "resources": {"limits": limits},
                }
            ],
        },
    }


def phase(stack: Flexnpu, core: Any, name: str, wanted: str, timeout: float = 180) -> Any:
    def reached() -> Any:
        pod = core.read_namespaced_pod(name, NAMESPACE)
        if pod.status.phase == "Failed":
            [record] = records_of(stack.cluster.cri_records, NAMESPACE, name)
            raise AssertionError(f"pod {name} failed: {container_log(record)[-2000:]}")
        if wanted == "Running" and pod.status.phase == "Succeeded":
            return pod
        return pod if pod.status.phase == wanted else None

    return wait_for(f"pod {name} {wanted}", reached, timeout, watch=stack.cluster.procs, interval=0.5)


def test_two_and_eight_units_on_one_card_get_their_shares_through_the_interposer(
    flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any, api: k8s.ApiClient
) -> None:
    stack = flexnpu_stack
    stack.build_native()
    (stack.work / "fakedev-shares").unlink(missing_ok=True)
    (stack.work / "start-shares").unlink(missing_ok=True)
    pods = {"dp-share-2": 2, "dp-share-8": 8}
    try:
        ids, pids, cards = {}, {}, set()
        for i, (name, units) in enumerate(pods.items()):
            argv = [a.format(seed=201 + i) for a in SATURATING]
            core.create_namespaced_pod(NAMESPACE, workload_pod(stack, name, units, argv))
            pod = phase(stack, core, name, "Running")  # the second pod is placed once the first holds its card
            [card] = json.loads(pod.metadata.annotations[names.ANNOTATION_ASSIGNED])
            cards.add(card["index"])
            ids[name] = claim_registration_id(wait_registered(stack, NAMESPACE, pod.metadata.uid))
        assert len(cards) == 1, f"the extender put the pods on cards {cards}: they do not share one"
        for name in pods:
            [record] = records_of(cluster.cri_records, NAMESPACE, name)
            pid = wait_for(f"process of {name}", functools.partial(process_pid, cluster.cri_records, record), 60)
            pids[pid] = name
            problems = enforcement_problems(cluster.cri_records, record, ids[name])
            assert not problems, f"{name}: {problems}"
        open_gate(stack.work / "start-shares")  # the work starts together, however far apart kubelet started them
        for name in pods:
            phase(stack, core, name, "Succeeded")
        busy = device_time(stack.work / "fakedev-shares", pids)
        small = busy["dp-share-2"] / (busy["dp-share-2"] + busy["dp-share-8"])
        assert 0.12 <= small <= 0.28, f"2-unit pod got {small:.3f} of the device time (target 0.2)"
    finally:
        for name in pods:
            try:
                core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=1)
            except k8s.ApiException as exc:
                if exc.status != 404:
                    raise
