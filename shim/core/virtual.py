"""Virtual-time discrete-event simulation of tenants sharing one simulated NPU under a slice scheduler.

DESIGN.md section 8 asks for two modes over the same scheduler core: real time (separate processes, the real
grant path) and virtual time (this module: one process, deterministic, immune to the noise of a shared 2-core
machine). The accuracy and tail-latency benchmarks (``flexnpu bench share|priority|idle``) run here.

What is simulated:

- the device: ``flexnpu.shim.core.simdevice.SimDevice`` (FIFO non-preemptive engine, ground-truth accounting);
  every figure is read from its completed kernels, never from the scheduler;
- tenants (``Workload``): seeded kernel-duration mixes, a launch-queue depth (kernels outstanding on the device),
  saturating batch work or steps of N kernels arriving periodically or as a Poisson process, optional
  activity intervals;
- the gating (``Scenario.gating``): ``ungated`` (native card), ``share`` (flexnpu's ``CardScheduler``) or ``ops``
  (the seed's operator counting, same class in ``ops`` mode);
- the in-pod runtime (``RuntimeModel``): on a grant it launches kernels while its budget lasts, keeping at most
  ``inflight_cap_us`` of not-started work queued on the device (so a revoke waits for little more than the running
  kernel); when the budget runs out it asks ``extend`` (modelled as pipelined, no latency) and otherwise drains
  its in-flight kernels and releases with the device time it used (measured from the device's kernel timings, as
  a real runtime does with events). Every runtime<->daemon message (want, grant, revoke, release) takes
  ``grant_latency_us`` one way. The model knows each kernel's duration before launching it; a real runtime
  estimates it from the kernel's history.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal

from flexnpu.priority import Priority
from flexnpu.shim.core.simdevice import CompletedKernel, SimDevice
from flexnpu.shim.core.slicing import CardScheduler, Grant, Mode, SlicePolicy, Tenant

KernelMix = Literal["uniform", "loguniform"]
Arrivals = Literal["periodic", "poisson"]
Gating = Literal["ungated", "share", "ops"]
GATINGS: tuple[Gating, ...] = ("ungated", "share", "ops")
_DEVICE_MEMORY = 64 << 30


@dataclass(frozen=True)
class Workload:
    """One tenant: what it launches, how deep its launch queue is, when its work arrives."""

    name: str
    aicore_alloc: int
    priority: Priority = Priority.NORMAL
    kernel_min_us: int = 50
    kernel_max_us: int = 5000
    kernel_mix: KernelMix = "loguniform"
    depth: int = 8
    """Launch-queue depth: the most kernels this tenant keeps submitted and unfinished on the device."""
    step_kernels: int = 0
    """0: saturating batch work; N > 0: steps of N kernels (latency measured per step)."""
    step_period_us: int = 0
    """Mean interval between step arrivals."""
    arrivals: Arrivals = "periodic"
    active: tuple[tuple[int, int], ...] = ()
    """[start, end) intervals in microseconds when the tenant issues work; empty = all the time."""
    seed: int = 0


@dataclass(frozen=True)
class RuntimeModel:
    """The in-pod runtime as the simulation sees it."""

    grant_latency_us: int = 0
    """One-way latency of each runtime<->daemon message."""
    inflight_cap_us: int | None = 500
    """Most not-yet-started work a gated tenant keeps queued on the device, beyond one kernel (None: only the
    launch depth)."""


@dataclass(frozen=True)
class Scenario:
    workloads: tuple[Workload, ...]
    gating: Gating = "share"
    """``ungated``: no scheduler; ``share`` / ``ops``: the scheduler in that mode (overrides ``policy.mode``)."""
    policy: SlicePolicy = field(default_factory=SlicePolicy)
    runtime: RuntimeModel = field(default_factory=RuntimeModel)
    duration_us: int = 5_000_000
    window_us: int = 1_000_000
    warmup_us: int = 0
    """Steps arriving before this are left out of the latency figures."""


@dataclass(frozen=True)
class TenantResult:
    name: str
    busy_us: int
    kernels: int
    window_shares: tuple[float, ...]
    """Device-time share of each full window (busy time / window length), from the device's ground truth."""
    step_latencies_us: tuple[int, ...]

    def latency_percentile_us(self, q: float) -> float:
        return percentile(self.step_latencies_us, q)


@dataclass(frozen=True)
class SimResult:
    scenario: Scenario
    tenants: dict[str, TenantResult]
    timeline: tuple[CompletedKernel, ...]
    """Every kernel the engine ran (the one running at the end cut at the end)."""

    def busy_between(self, name: str, start_us: int, end_us: int) -> int:
        """Device time ``name`` used inside [start_us, end_us)."""
        return sum(_overlap(k, start_us, end_us) for k in self.timeline if k.client == name)


def percentile(values: tuple[int, ...] | list[int], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def target_shares(workloads: tuple[Workload, ...], policy: SlicePolicy) -> dict[str, float]:
    """What DESIGN.md section 3 gives every tenant when all of them are backlogged."""
    total = sum(w.aicore_alloc for w in workloads)
    return {w.name: w.aicore_alloc / max(policy.quota, total) for w in workloads}


def run(scenario: Scenario) -> SimResult:
    """Run one scenario to its end; deterministic for a given scenario."""
    return _Simulation(scenario).run()


def _overlap(kernel: CompletedKernel, start_us: int, end_us: int) -> int:
    return max(0, min(end_us, kernel.finished_us) - max(start_us, kernel.started_us))


# ----- tenants --------------------------------------------------------------------------------------------------


@dataclass
class _Step:
    arrival_us: int
    last_kernel: int  # the tenant's launch index of the step's last kernel


@dataclass
class _TenantSim:
    workload: Workload
    rng: random.Random
    backlog: deque[int] = field(default_factory=deque)  # durations of step kernels not launched yet
    steps: deque[_Step] = field(default_factory=deque)
    queued_kernels: int = 0  # launch index of the next kernel to be queued in backlog
    completed: int = 0
    latencies: list[int] = field(default_factory=list)
    wanting: bool = False  # asked the scheduler and not granted yet
    granted: bool = False
    stopping: bool = False
    budget_end: int = 0
    ops_left: int = 0
    ops_used: int = 0
    charged_busy: int = 0

    @property
    def name(self) -> str:
        return self.workload.name

    def is_active(self, now_us: int) -> bool:
        return not self.workload.active or any(a <= now_us < b for a, b in self.workload.active)

    def has_work(self, now_us: int) -> bool:
        if self.workload.step_kernels:
            return bool(self.backlog)
        return self.is_active(now_us)

    def peek_kernel_us(self) -> int:
        """The duration of the next kernel to launch (a real runtime estimates it from the kernel's history)."""
        if not self.backlog:
            self.backlog.append(self.draw_kernel())  # batch work: drawn when first looked at
        return self.backlog[0]

    def next_kernel_us(self) -> int:
        duration = self.peek_kernel_us()
        self.backlog.popleft()
        return duration

    def draw_kernel(self) -> int:
        low, high = self.workload.kernel_min_us, self.workload.kernel_max_us
        if self.workload.kernel_mix == "uniform":
            return self.rng.randint(low, high)
        return max(1, round(math.exp(self.rng.uniform(math.log(low), math.log(high)))))

    def add_step(self, now_us: int) -> None:
        for _ in range(self.workload.step_kernels):
            self.backlog.append(self.draw_kernel())
        self.queued_kernels += self.workload.step_kernels
        self.steps.append(_Step(now_us, self.queued_kernels))

    def next_arrival_us(self, now_us: int) -> int:
        period = self.workload.step_period_us
        if self.workload.arrivals == "poisson":
            return now_us + max(1, round(self.rng.expovariate(1.0 / period)))
        return now_us + period

    def on_complete(self, finished_us: int, warmup_us: int) -> None:
        self.completed += 1
        while self.steps and self.completed >= self.steps[0].last_kernel:
            step = self.steps.popleft()
            if step.arrival_us >= warmup_us:
                self.latencies.append(finished_us - step.arrival_us)


# ----- the event loop -------------------------------------------------------------------------------------------

_Event = tuple[int, int, str, str, object]  # time, sequence, kind, tenant, payload


class _Simulation:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.device = SimDevice(_DEVICE_MEMORY)
        self.tenants = {w.name: _TenantSim(w, random.Random(w.seed)) for w in scenario.workloads}
        mode: Mode = "ops" if scenario.gating == "ops" else "share"
        self.sched = CardScheduler(
            replace(scenario.policy, mode=mode),
            [Tenant(w.name, w.aicore_alloc, w.priority) for w in scenario.workloads],
        )
        self.events: list[_Event] = []
        self.seq = 0
        self.wakes: set[int] = set()
        self.revoked: set[str] = set()
        self.timeline: list[CompletedKernel] = []
        self.latency = scenario.runtime.grant_latency_us
        self._push(0, "start")
        for tenant in self.tenants.values():
            self.device.add_client(tenant.name)
            self._schedule_activity(tenant)

    def run(self) -> SimResult:
        end = self.scenario.duration_us
        while True:
            now = self._next_time()
            if now is None or now > end:
                break
            for kernel in self.device.advance(now):
                self._complete(kernel)
            while self.events and self.events[0][0] <= now:
                _, _, kind, name, payload = heapq.heappop(self.events)
                self._handle(now, kind, name, payload)
            self._settle(now)
        for kernel in self.device.advance(end):
            self._complete(kernel)
        return self._result()

    def _next_time(self) -> int | None:
        times = [
            t for t in (self.device.next_completion_us(), self.events[0][0] if self.events else None) if t is not None
        ]
        return min(times) if times else None

    def _push(self, at_us: int, kind: str, name: str = "", payload: object = None) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at_us, self.seq, kind, name, payload))

    def _schedule_activity(self, tenant: _TenantSim) -> None:
        for start, stop in tenant.workload.active:
            self._push(start, "activity", tenant.name)
            self._push(stop, "activity", tenant.name)
        if tenant.workload.step_kernels:
            first = tenant.workload.active[0][0] if tenant.workload.active else 0
            self._push(first, "arrival", tenant.name)

    def _complete(self, kernel: CompletedKernel) -> None:
        self.timeline.append(kernel)
        self.tenants[kernel.client].on_complete(kernel.finished_us, self.scenario.warmup_us)

    # ----- events ---------------------------------------------------------------------------------------------

    def _handle(self, now: int, kind: str, name: str, payload: object) -> None:
        tenant = self.tenants.get(name)
        if kind == "arrival" and tenant is not None:
            self._arrival(now, tenant)
        elif kind == "grant" and tenant is not None and isinstance(payload, Grant):
            self._grant(now, tenant, payload)
        elif kind == "budget" and tenant is not None:
            self._budget_end(now, tenant)
        elif kind == "revoke" and tenant is not None:
            if tenant.granted:
                tenant.stopping = True
        elif kind == "want":
            self.sched.want(name, now)
        elif kind == "release" and isinstance(payload, tuple):
            used, still_wants, ops_used = payload
            self.revoked.discard(name)
            self.sched.release(name, used, now, still_wants, ops_used=ops_used)
        elif kind == "wake":
            self.wakes.discard(now)

    def _arrival(self, now: int, tenant: _TenantSim) -> None:
        if tenant.is_active(now):
            tenant.add_step(now)
        nxt = tenant.next_arrival_us(now)
        if tenant.is_active(nxt) or any(a > now for a, _ in tenant.workload.active):
            self._push(nxt, "arrival", tenant.name)

    def _grant(self, now: int, tenant: _TenantSim, grant: Grant) -> None:
        tenant.wanting = False
        tenant.granted = True
        tenant.stopping = False
        tenant.budget_end = now + grant.budget_us
        tenant.ops_left = grant.ops if grant.ops is not None else 0
        tenant.ops_used = 0
        tenant.charged_busy = self.device.busy_us(tenant.name)
        self._push(tenant.budget_end, "budget", tenant.name, tenant.budget_end)

    def _budget_end(self, now: int, tenant: _TenantSim) -> None:
        if not tenant.granted or tenant.stopping or now != tenant.budget_end:
            return
        if self.scenario.gating == "share":
            extension = self.sched.extend(tenant.name, self._take_used(tenant), now)
            if extension is not None:
                tenant.budget_end = now + extension.budget_us
                self._push(tenant.budget_end, "budget", tenant.name, tenant.budget_end)
                return
        tenant.stopping = True

    def _take_used(self, tenant: _TenantSim) -> int:
        busy = self.device.busy_us(tenant.name)
        used, tenant.charged_busy = busy - tenant.charged_busy, busy
        return used

    # ----- what everybody does at a point in time -------------------------------------------------------------

    def _settle(self, now: int) -> None:
        for tenant in self.tenants.values():
            if self.scenario.gating == "ungated":
                self._launch(now, tenant, gated=False)
            else:
                self._act_gated(now, tenant)
        if self.scenario.gating != "ungated":
            self._decide(now)

    def _act_gated(self, now: int, tenant: _TenantSim) -> None:
        has_work = tenant.has_work(now)
        if tenant.granted:
            if not tenant.stopping and now < tenant.budget_end:
                self._launch(now, tenant, gated=True)
            if self._should_release(now, tenant):
                self._release(now, tenant, tenant.has_work(now))
        elif has_work and not tenant.wanting:
            tenant.wanting = True
            self._push(now + self.latency, "want", tenant.name)

    def _should_release(self, now: int, tenant: _TenantSim) -> bool:
        ops = self.scenario.gating == "ops"
        done = tenant.stopping or not tenant.has_work(now) or (ops and tenant.ops_left <= 0)
        # The seed's ops policy does not drain: the next round's operators queue behind the current ones.
        return done and (ops or self.device.outstanding(tenant.name) == 0)

    def _release(self, now: int, tenant: _TenantSim, still_wants: bool) -> None:
        tenant.granted = False
        tenant.stopping = False
        tenant.wanting = still_wants
        self._push(now + self.latency, "release", tenant.name, (self._take_used(tenant), still_wants, tenant.ops_used))

    def _launch(self, now: int, tenant: _TenantSim, gated: bool) -> None:
        cap = self.scenario.runtime.inflight_cap_us if self.scenario.gating == "share" else None
        ops = self.scenario.gating == "ops"
        while tenant.has_work(now) and self.device.outstanding(tenant.name) < tenant.workload.depth:
            queued = self.device.queued_work_us(tenant.name)
            if gated and cap is not None and queued > 0 and queued + tenant.peek_kernel_us() > cap:
                return
            if ops and tenant.ops_left <= 0:
                return
            self.device.submit(tenant.name, tenant.next_kernel_us(), now)
            tenant.ops_left -= 1
            tenant.ops_used += 1

    def _decide(self, now: int) -> None:
        while True:
            decision = self.sched.decide(now)
            if decision.revoke is not None and decision.revoke not in self.revoked:
                self.revoked.add(decision.revoke)
                self._push(now + self.latency, "revoke", decision.revoke)
            if decision.wake_at_us is not None and decision.wake_at_us not in self.wakes:
                self.wakes.add(decision.wake_at_us)
                self._push(decision.wake_at_us, "wake")
            if decision.grant is None:
                return
            self._push(now + self.latency, "grant", decision.grant.tenant_id, decision.grant)

    # ----- results --------------------------------------------------------------------------------------------

    def _result(self) -> SimResult:
        running = self.device.running_kernel()
        if running is not None:
            self.timeline.append(running)
        timeline = tuple(self.timeline)
        windows = self.scenario.duration_us // self.scenario.window_us
        results = {}
        for name, tenant in self.tenants.items():
            mine = [k for k in timeline if k.client == name]
            shares = tuple(
                _window_busy(mine, i * self.scenario.window_us, self.scenario.window_us) / self.scenario.window_us
                for i in range(windows)
            )
            results[name] = TenantResult(
                name,
                sum(_overlap(k, 0, self.scenario.duration_us) for k in mine),
                len(mine),
                shares,
                tuple(tenant.latencies),
            )
        return SimResult(self.scenario, results, timeline)


def _window_busy(kernels: list[CompletedKernel], start_us: int, length_us: int) -> int:
    return sum(_overlap(k, start_us, start_us + length_us) for k in kernels)
