"""The daemon's device-memory watch, decided: which registration uses how much memory, and which is past its cap.

Inputs are readings the watch adapter (``flexnpu.shim.daemon.memwatch``) gathered, all treated as hostile:

- per-process usage on a card (npu-smi's process table, NVML on CUDA) with the pod UID each pid's cgroup names;
  a pod's usage on a card is the sum over its processes there, compared with the memory cap of its registration
  on that card (the sum of the caps when one pod holds several registrations on one card);
- or, where no per-process table exists (the simulated cards), each registration's pod-wide account from its
  shared-memory slot.

A cap of 0 MiB allows nothing, as the interposer's own accounting does. A process whose pod has no registration
on that card, or a registration without a pod UID, cannot be attributed and is never judged (its usage shows as
unknown, ``None``). The pids to kill are those of the over-cap pod on that card only, never pid 0 or 1 and never
the daemon's own (``protected``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from flexnpu.registration import Registration

MIB = 1 << 20
# The most device memory one reading may claim (1 PiB): anything larger is clamped to it.
MAX_MEMORY_BYTES = 1 << 50
CardKey = tuple[int, int]


@dataclass(frozen=True)
class ProcessUsage:
    """One process holding device memory on card (npu, chip)."""

    npu: int
    chip: int
    pid: int
    used_bytes: int


@dataclass(frozen=True)
class Verdict:
    """One registration's memory on its card: used (None when unknown), cap, excess, and the pids to kill."""

    flexnpu_id: str
    pod_uid: str
    npu: int
    chip: int
    used_bytes: int | None
    cap_bytes: int
    pids: tuple[int, ...]

    @property
    def over_bytes(self) -> int:
        return max(0, (self.used_bytes or 0) - self.cap_bytes)

    @property
    def over_cap(self) -> bool:
        return self.used_bytes is not None and self.used_bytes > self.cap_bytes


def clamp_bytes(value: object) -> int:
    """A memory figure from outside as 0..MAX_MEMORY_BYTES (non-numbers and non-finite values count 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if isinstance(value, float):
        if not math.isfinite(value):
            return MAX_MEMORY_BYTES if value > 0 else 0
        value = int(value)
    return min(max(0, value), MAX_MEMORY_BYTES)


def judge_processes(
    registrations: Iterable[Registration],
    processes: Iterable[ProcessUsage],
    pod_of: Mapping[int, str],
    protected: Iterable[int] = (),
) -> list[Verdict]:
    """Verdicts from per-process usage and the pod UID of each pid (pure)."""
    regs = list(registrations)
    never = {0, 1, *protected}
    used: dict[tuple[str, int, int], int] = {}
    pids: dict[tuple[str, int, int], set[int]] = {}
    for proc in processes:
        pod = pod_of.get(proc.pid, "")
        if not pod or proc.pid <= 0:
            continue
        key = (pod, proc.npu, proc.chip)
        used[key] = min(used.get(key, 0) + clamp_bytes(proc.used_bytes), MAX_MEMORY_BYTES)
        pids.setdefault(key, set()).add(proc.pid)
    caps: dict[tuple[str, int, int], int] = {}
    for reg in regs:
        if reg.pod_uid:
            key = (reg.pod_uid, reg.npu, reg.chip)
            caps[key] = caps.get(key, 0) + reg.memory_alloc * MIB
    verdicts = []
    for reg in regs:
        key = (reg.pod_uid, reg.npu, reg.chip)
        if not reg.pod_uid:
            verdicts.append(Verdict(reg.flexnpu_id, "", reg.npu, reg.chip, None, reg.memory_alloc * MIB, ()))
            continue
        total, cap = used.get(key, 0), caps[key]
        kill = tuple(sorted(p for p in pids.get(key, ()) if p not in never)) if total > cap else ()
        verdicts.append(Verdict(reg.flexnpu_id, reg.pod_uid, reg.npu, reg.chip, total, cap, kill))
    return verdicts


def judge_pod_wide(registrations: Iterable[Registration], used_by_id: Mapping[str, object]) -> list[Verdict]:
    """Verdicts from each registration's pod-wide account (the shared-memory slot); no pids to kill (pure)."""
    verdicts = []
    for reg in registrations:
        raw = used_by_id.get(reg.flexnpu_id)
        used = None if raw is None else clamp_bytes(raw)
        verdicts.append(Verdict(reg.flexnpu_id, reg.pod_uid, reg.npu, reg.chip, used, reg.memory_alloc * MIB, ()))
    return verdicts


@dataclass(frozen=True)
class Transition:
    """A registration that went over its cap (``over`` True) or back under it."""

    verdict: Verdict
    over: bool


def transitions(before: Mapping[str, bool], verdicts: Sequence[Verdict]) -> tuple[list[Transition], dict[str, bool]]:
    """What changed since ``before`` (flexnpu_id -> was over), and the new state; gone registrations drop out."""
    now = {v.flexnpu_id: v.over_cap for v in verdicts}
    changed = [Transition(v, v.over_cap) for v in verdicts if before.get(v.flexnpu_id, False) != v.over_cap]
    return changed, now


__all__ = [
    "MAX_MEMORY_BYTES",
    "MIB",
    "ProcessUsage",
    "Transition",
    "Verdict",
    "clamp_bytes",
    "judge_pod_wide",
    "judge_processes",
    "transitions",
]
