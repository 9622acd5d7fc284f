"""The cluster in a box: every component a separate process, pods placed, admitted, run and disturbed.

One test walks the whole path of DESIGN.md section 12 (pod spec -> extender -> device plugin -> claim -> daemon ->
shim on the simulated NPU), then restarts each component while the pods run and sends malformed requests to
every endpoint. It asserts behaviour only: placements, handshake phases, registrations, progress, bookings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flexnpu import names
from flexnpu.annotations import BindPhase
from flexnpu_testsupport.box.cluster import NODE, Box, BoxConfig
from flexnpu_testsupport.box.kubelet import PodCgroups
from flexnpu_testsupport.box.scenario import RESTART_ORDER, Scenario


def _cgroups_writable() -> bool:
    probe = PodCgroups("probe")
    probe.remove()
    return probe.available


pytestmark = pytest.mark.skipif(
    not _cgroups_writable(),
    reason="needs a writable cgroup hierarchy: flexnpud "
    "tells pods apart by the pod UID in their cgroup, which the box's kubelet sets",
)


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    with Box(tmp_path, BoxConfig()) as box:
        scenario = Scenario(box)
        try:
            yield scenario
        finally:
            scenario.close()


def test_pods_run_through_every_component_and_survive_restarts_and_bad_input(scenario: Scenario) -> None:
    box, api = scenario.box, scenario.api
    containers = scenario.place_all()
    assert scenario.report.placements == {t.name: NODE for t in scenario.tenants}
    for tenant, container in zip(scenario.tenants, containers, strict=True):
        annotations = api.pod("default", tenant.name)["metadata"]["annotations"]
        assert annotations[names.ANNOTATION_BIND_PHASE] == BindPhase.ALLOCATED.value
        assert container.env[names.ENV_UNITS] == str(tenant.units)
        assert container.env[names.ENV_PRIORITY] == tenant.priority
        assert container.env["PYTHONPATH"] == str(box.runtime_dir)  # the runtime mount, seen from the host
    assert len({c.device_ids[0] for c in containers}) == len(containers)  # kubelet never hands out an id twice

    scenario.wait_registered()
    registrations = scenario.daemon_registrations()
    assert set(scenario.registration_ids.values()) <= set(registrations)
    assert {registrations[i]["priority"] for i in scenario.registration_ids.values()} == {"normal", "high"}

    scenario.measure_shares(1.5)
    shares = scenario.report.shares
    assert shares["batch-8"]["achieved_share"] > shares["batch-2"]["achieved_share"] > 0  # weights 8:2 hold

    for outcome in scenario.restart_each():
        assert outcome.containers_alive, outcome
        assert outcome.containers_progressed, outcome
        assert outcome.registrations_lost == 0, outcome
        assert outcome.double_booked == [], outcome
        assert outcome.claims_registered, outcome
    assert [r.component for r in scenario.report.restarts] == list(RESTART_ORDER)
    assert scenario.probe_is_refused()  # the restarted extender still sees every booking on the card

    scenario.send_faults()
    for endpoint in scenario.report.faults:
        assert endpoint["sent"] > 0 and endpoint["crashed"] == 0, endpoint
    extender = scenario.report.faults[0]
    assert extender["unhandled"] == 0, extender
    assert scenario.containers_alive()
    assert scenario.registrations_lost() == 0
