"""Issue 10 case 11 on the real components: two extender replicas, as the chart runs them with replicas: 2.

The suite's extender (``extender-0``) leads and publishes its URL in the Lease; a second replica (``extender-1``)
starts beside it with the chart's args. Both must be Ready (the chart's one Service sends kube-scheduler's calls to
any ready replica). kube-scheduler is then pointed at the standby: it answers filter and prioritize from its own
caches and forwards the bind to the leader, and the pod runs with its claim Registered. Then the leader stops (it
gives the Lease back): the standby takes over and binds the next pod itself. No card holds more than its units.
The stack is put back as it was (``extender-0`` leading, the scheduler pointed at it) for the tests after this one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from realk8s_cluster import ControlPlane
from realk8s_flexnpu import Flexnpu, metric, wait_registered
from realk8s_procs import http_ok, wait_for
from test_restarts import card_units, pod_body, running, stop_proc

from flexnpu.waiting import free_port

pytestmark = [pytest.mark.realk8s, pytest.mark.timeout(600)]

NAMESPACE = "replicas"
UNITS_PER_CARD = 10


def create_pod(core: Any, name: str, units: int) -> None:
    body = pod_body(name, units)
    body["metadata"]["namespace"] = NAMESPACE
    core.create_namespaced_pod(NAMESPACE, body)


def binds(port: int, outcome: str) -> float:
    return metric(f"http://127.0.0.1:{port}/metrics", "flexnpu_extender_binds_total", {"outcome": outcome})


def leads(port: int) -> bool | None:
    return True if metric(f"http://127.0.0.1:{port}/metrics", "flexnpu_extender_leader", {}) == 1 else None


@pytest.fixture
def standby(flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any) -> Iterator[int]:
    """``extender-1`` beside the leading ``extender-0``; afterwards ``extender-0`` leads again alone and the
    scheduler calls it, as before."""
    stack = flexnpu_stack
    wait_for("extender-0 leads", lambda: leads(stack.extender_port), 60, watch=cluster.procs, interval=0.5)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
    wait_for("ServiceAccount", lambda: core.read_namespaced_service_account("default", NAMESPACE), 60, interval=0.5)
    port = free_port()
    stack.start_extender(port, identity="extender-1")
    try:
        yield port
    finally:
        core.delete_namespace(NAMESPACE)
        if not any(p.name == "extender" for p in cluster.procs):
            stack.start_extender(stack.extender_port)
        if any(p.name == "extender-1" for p in cluster.procs):
            stop_proc(cluster, "extender-1")  # gives the Lease back, if it holds it
        wait_for("extender-0 leads again", lambda: leads(stack.extender_port), 60, watch=cluster.procs, interval=0.5)
        stop_proc(cluster, "flexnpu-scheduler")
        stack.start_scheduler()

        def gone() -> bool | None:
            return None if core.list_namespaced_pod(NAMESPACE).items else True

        wait_for(f"pods of {NAMESPACE} gone", gone, 120, interval=0.5)


def test_both_replicas_are_ready_and_the_standby_forwards_binds_until_it_leads(
    flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any, standby: int
) -> None:
    stack, port = flexnpu_stack, standby
    assert http_ok(f"http://127.0.0.1:{stack.extender_port}/readyz")
    assert http_ok(f"http://127.0.0.1:{port}/readyz")
    assert leads(port) is None
    stop_proc(cluster, "flexnpu-scheduler")
    stack.start_scheduler(extender_port=port)  # as if the Service had picked the standby for every call

    create_pod(core, "via-standby", 3)
    first = running(cluster, core, "via-standby", NAMESPACE)
    wait_registered(stack, NAMESPACE, first.metadata.uid)
    assert binds(port, "forwarded") == 1 and binds(port, "bound") == 0
    assert binds(stack.extender_port, "bound") >= 1

    stop_proc(cluster, "extender")  # the leader leaves and gives the Lease back
    wait_for("extender-1 leads", lambda: leads(port), 60, watch=cluster.procs, interval=0.5)
    create_pod(core, "after-failover", 3)
    second = running(cluster, core, "after-failover", NAMESPACE)
    wait_registered(stack, NAMESPACE, second.metadata.uid)

    assert binds(port, "bound") == 1
    assert all(units <= UNITS_PER_CARD for units in card_units(core).values()), card_units(core)
    assert core.read_namespaced_pod("via-standby", NAMESPACE).status.phase == "Running"
