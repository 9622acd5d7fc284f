"""The scenario of DESIGN.md section 12 in a box, and the figures it yields.

Two batch pods ask for 2 and 8 units of one card and a high-priority latency-critical pod for 2 more (the card
advertises U*f units with f = 2, so the card is oversubscribed and shares are weights; memory is requested
explicitly and never oversubscribed). The box schedules them through the extender, admits them through the
device plugin, and their containers run under the in-pod runtime on the simulated NPU once the operator has
registered their claims with flexnpud. Then it measures achieved shares (the simulated NPU's ground truth),
restarts every component in turn while the pods run, checking after each that no container was disturbed, no
registration was lost and no card is double-booked, and sends malformed requests to every endpoint.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from flexnpu import names
from flexnpu.annotations import decode_assignment
from flexnpu.cards import card_model
from flexnpu.shim.runtime.simnpu_client import SimNpuClient, SimNpuError
from flexnpu_testsupport.box.cluster import NODE, Box, http_json
from flexnpu_testsupport.box.faults import send_all, summary
from flexnpu_testsupport.box.kubelet import BoxKubelet, Container
from flexnpu_testsupport.box.processes import BoxError
from flexnpu_testsupport.box.scheduler import Scheduler

RESTART_ORDER = ("deviceplugin", "flexnpud", "extender", "operator")
PROGRESS_TIMEOUT_S = 20.0
REGISTERED_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Tenant:
    name: str
    units: int
    memory_mib: int
    workload: str  # batch | critical
    priority: str = "normal"


TENANTS = (
    Tenant("batch-2", 2, 8192, "batch"),
    Tenant("batch-8", 8, 16384, "batch"),
    Tenant("critical", 2, 8192, "critical", "high"),
)


@dataclass
class RestartOutcome:
    component: str
    seconds_to_ready: float
    containers_alive: bool
    containers_progressed: bool
    registrations_lost: int
    double_booked: list[str]
    claims_registered: bool
    claim_phases_after_restart: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Everything the box measured; ``as_dict`` is the JSON ``flexnpu demo --cluster --json`` prints."""

    placements: dict[str, str] = field(default_factory=dict)
    shares: dict[str, dict[str, float]] = field(default_factory=dict)
    share_source: str = ""
    critical_latency_us: dict[str, float] = field(default_factory=dict)
    restarts: list[RestartOutcome] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    faults_total: dict[str, int] = field(default_factory=dict)
    registrations_lost: int = 0
    double_booked: list[str] = field(default_factory=list)
    probe_refused: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pod_body(tenant: Tenant) -> dict[str, Any]:
    limits = {names.RESOURCE_VNPU: str(tenant.units), names.RESOURCE_VNPU_MEMORY: str(tenant.memory_mib)}
    notes = {names.ANNOTATION_PRIORITY: tenant.priority} if tenant.priority != "normal" else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": tenant.name, "namespace": "default", "annotations": notes},
        "spec": {
            "schedulerName": "flexnpu-scheduler",
            "containers": [
                {"name": "main", "image": "flexnpu-box-tenant", "resources": {"limits": limits, "requests": limits}}
            ],
        },
        "status": {"phase": "Pending"},
    }


class Scenario:
    """Runs the scenario on a started ``Box``; each step is a method so that tests can assert between them."""

    def __init__(self, box: Box, tenants: Sequence[Tenant] = TENANTS) -> None:
        self.box = box
        self.tenants = list(tenants)
        self.api = box.require_api()
        self.scheduler = Scheduler(box.extender_url, self.api, box.config.node_cache_capable)
        self.kubelet = BoxKubelet(
            box.kubelet,
            self.api,
            box.dir,
            {"FLEXNPU_BOX_SIMNPU": str(box.simnpu_socket), "FLEXNPU_BOX_DAEMON": box.daemon_url},
        )
        self.report = Report()
        self.registration_ids: dict[str, str] = {}

    def close(self) -> None:
        self.kubelet.stop_all()

    # ----- placing and starting the pods ------------------------------------------------------------------------

    def place_all(self) -> list[Container]:
        """Create every pod, then, pod by pod, schedule it through the extender and admit it as kubelet does once it
        sees the pod bound: the extender binds a second pod of the same first size to a node only after the device
        plugin has served the first one's Allocate (kubelet's Allocate names no pod)."""
        for tenant in self.tenants:
            self.api.create(pod_body(tenant))
        containers = []
        for tenant in self.tenants:
            self.report.placements[tenant.name] = self.scheduler.schedule("default", tenant.name, [NODE]).node
            containers.append(self.kubelet.admit("default", tenant.name, tenant.workload))
        return containers

    def wait_registered(self) -> None:
        """Every claim Registered by the operator and every container past its first steps."""
        self.box.wait_for(
            lambda: len(self.registered_claims()) == len(self.tenants),
            REGISTERED_TIMEOUT_S,
            "Registered claims for every pod",
        )
        self.registration_ids = {c["metadata"]["name"]: c["status"]["flexnpuId"] for c in self.api.claims()}
        self.wait_progress({name: 0 for name in self.kubelet.containers})

    def claim_phases(self) -> list[str]:
        return sorted(f"{c['metadata']['name']}={(c.get('status') or {}).get('phase')}" for c in self.api.claims())

    def claims_settle(self) -> bool:
        """True once every claim is Registered again (the operator may report a restarting daemon meanwhile)."""
        deadline = time.monotonic() + REGISTERED_TIMEOUT_S
        while time.monotonic() < deadline:
            if len(self.registered_claims()) == len(self.tenants):
                return True
            time.sleep(0.1)
        return False

    def registered_claims(self) -> list[str]:
        return [
            c["metadata"]["name"] for c in self.api.claims() if (c.get("status") or {}).get("phase") == "Registered"
        ]

    # ----- checks -------------------------------------------------------------------------------------------------

    def steps(self) -> dict[str, int]:
        return {name: int(c.progress().get("steps", 0)) for name, c in self.kubelet.containers.items()}

    def wait_progress(self, since: dict[str, int]) -> bool:
        """True once every container made progress past ``since`` (False when one did not in time)."""
        deadline = time.monotonic() + PROGRESS_TIMEOUT_S
        while time.monotonic() < deadline:
            now = self.steps()
            if all(now[name] > since.get(name, 0) for name in now):
                return True
            self._raise_if_container_died()
            time.sleep(0.1)
        return False

    def _raise_if_container_died(self) -> None:
        for name, container in self.kubelet.containers.items():
            if not container.child.alive():
                raise BoxError(f"container {name} exited with {container.child.returncode()}: {container.child.tail()}")

    def containers_alive(self) -> bool:
        return all(c.child.alive() for c in self.kubelet.containers.values())

    def daemon_registrations(self) -> dict[str, dict[str, Any]]:
        status, info = http_json(self.box.daemon_url + "/device/flexnpu-info")
        if status != 200 or not isinstance(info, dict):
            raise BoxError(f"flexnpud flexnpu-info answered {status}: {info}")
        return {r["flexnpu_id"]: r for r in info["registrations"]}

    def registrations_lost(self) -> int:
        """Claims whose registration (the id the operator recorded once Registered) is gone from flexnpud."""
        present = self.daemon_registrations()
        return sum(1 for flexnpu_id in self.registration_ids.values() if flexnpu_id not in present)

    def double_booked(self) -> list[str]:
        """Cards whose assignments (pod annotations) or registrations (flexnpud) pass units*f or the HBM."""
        units_per_card, factor = self.box.config.units_per_card, self.box.config.oversubscription
        hbm = card_model(self.box.config.model).hbm_mib
        units: dict[str, int] = {}
        memory: dict[str, int] = {}
        for pod in self.api.pods():
            raw = (pod["metadata"].get("annotations") or {}).get(names.ANNOTATION_ASSIGNED)
            for assignment in decode_assignment(raw) if raw else ():
                units[assignment.uuid] = units.get(assignment.uuid, 0) + assignment.units
                memory[assignment.uuid] = memory.get(assignment.uuid, 0) + assignment.memory_mib
        for registration in self.daemon_registrations().values():
            key = f"flexnpud npu {registration['npu']}"
            units[key] = units.get(key, 0) + int(registration["aicore_alloc"])
            memory[key] = memory.get(key, 0) + int(registration["memory_alloc"])
        return [
            f"{card}: {units[card]} units, {memory[card]} MiB"
            for card in units
            if units[card] > units_per_card * factor or memory[card] > hbm
        ]

    def probe_is_refused(self) -> bool:
        """A pod asking for more units than the card has left is filtered out (the extender saw every booking)."""
        free = self.box.config.units_per_card * self.box.config.oversubscription - sum(t.units for t in self.tenants)
        probe = pod_body(Tenant("probe", min(free + 1, self.box.config.units_per_card), 1024, "batch"))
        created = self.api.create(probe)
        fits, _ = self.scheduler.filter(created, [NODE])
        self.api.request("DELETE", f"/api/v1/namespaces/default/pods/{probe['metadata']['name']}")
        return not fits

    # ----- figures -----------------------------------------------------------------------------------------------

    def measure_shares(self, seconds: float) -> None:
        """Achieved device-time shares over ``seconds``, from the simulated NPU's own accounting."""
        first, source = self._busy()
        started = time.monotonic()
        time.sleep(seconds)
        second, _ = self._busy()
        window_us = (time.monotonic() - started) * 1e6
        weights = {t.name: t.units for t in self.tenants}
        total_busy = sum(second.get(n, 0.0) - first.get(n, 0.0) for n in weights) or 1.0
        batch = [t.name for t in self.tenants if t.workload == "batch"]
        batch_busy = sum(second.get(n, 0.0) - first.get(n, 0.0) for n in batch) or 1.0
        for tenant in self.tenants:
            used = second.get(tenant.name, 0.0) - first.get(tenant.name, 0.0)
            entry = {
                "units": float(tenant.units),
                "achieved_share": used / window_us,
                "share_of_busy": used / total_busy,
            }
            if tenant.workload == "batch":
                entry["target_batch_split"] = tenant.units / sum(weights[n] for n in batch)
                entry["achieved_batch_split"] = used / batch_busy
            self.report.shares[tenant.name] = entry
        self.report.share_source = source

    def _busy(self) -> tuple[dict[str, float], str]:
        try:
            with SimNpuClient(str(self.box.simnpu_socket), name="box-observer") as observer:
                return {n: s["busy_us"] for n, s in observer.stats().items()}, "simulated NPU ground truth"
        except (SimNpuError, KeyError, TypeError):
            by_id = {c.progress().get("id"): name for name, c in self.kubelet.containers.items()}
            figures = self.daemon_registrations()
            return (
                {by_id[i]: float(r.get("device_time_us", 0.0)) for i, r in figures.items() if i in by_id},
                "flexnpud device_time_us (the simulated NPU's stats were unavailable)",
            )

    def measure_latency(self) -> None:
        critical = [c for c in self.kubelet.containers.values() if c.env.get("FLEXNPU_BOX_WORKLOAD") == "critical"]
        if not critical:
            return
        latencies = sorted(float(x) for x in critical[0].progress().get("latencies_us", []))
        if not latencies:
            return
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        self.report.critical_latency_us = {
            "steps": float(len(latencies)),
            "p50": statistics.median(latencies),
            "p99": p99,
            "max": latencies[-1],
        }

    # ----- restarts and faults -------------------------------------------------------------------------------------

    def restart_each(self, order: Sequence[str] = RESTART_ORDER) -> list[RestartOutcome]:
        for component in order:
            before = self.steps()
            started = time.monotonic()
            self.box.restart_component(component)
            ready = time.monotonic() - started
            progressed = self.wait_progress(before)
            phases = self.claim_phases()
            outcome = RestartOutcome(
                component,
                ready,
                self.containers_alive(),
                progressed,
                self.registrations_lost(),
                self.double_booked(),
                self.claims_settle(),
                phases,
            )
            self.report.restarts.append(outcome)
        return self.report.restarts

    def send_faults(self) -> None:
        results = send_all(self.box)
        self.report.faults = [r.as_dict() for r in results]
        self.report.faults_total = summary(results)

    def run(self, measure_seconds: float = 3.0) -> Report:
        """The whole scenario; the box must be started."""
        self.place_all()
        self.wait_registered()
        self.measure_shares(measure_seconds)
        self.measure_latency()
        self.restart_each()
        self.report.probe_refused = self.probe_is_refused()
        self.send_faults()
        self.report.registrations_lost = self.registrations_lost()
        self.report.double_booked = self.double_booked()
        return self.report
