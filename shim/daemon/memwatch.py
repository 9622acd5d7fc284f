"""flexnpud's device-memory watch: reads who uses how much device memory, reports pods past their cap, and kills.

Every ``[flexnpu] memory_watch_interval`` seconds a background thread reads one source, ``[flexnpu]
memory_source``:

- ``npu-smi`` (what ``auto`` means with ``devices = auto``): ``<npu_smi> info`` and its process table
  (flexnpu.npusmi), each pid's pod UID from ``/proc/<pid>/cgroup`` (flexnpu.shim.grant.identity, the grant
  server's reading of cgroups);
- ``nvml`` (CUDA nodes): every GPU's compute processes and their memory from ``[flexnpu] nvml_library``
  (flexnpu.shim.daemon.nvml), pod UIDs as for npu-smi;
- ``slots`` (what ``auto`` means on simulated cards): each registration's pod-wide ``mem_used_bytes`` from its
  shared-memory slot in the socket directory (flexnpu.shim.grant.shm; the pod writes it, so it is clamped).

The decision is ``flexnpu.shim.core.memory``. Each transition is logged once, as a line an Event exporter can
turn into a Kubernetes Event (``event=MemoryOverCap ...`` / ``event=MemoryUnderCap ...``); a source that fails
(npu-smi missing, exiting non-zero, printing something the parser does not know; NVML not loadable or
answering an error) is logged once when it starts
failing and once when it recovers, and never stops the daemon. With ``enforce_memory = kill`` the processes the
verdict names get SIGKILL, each only after its cgroup is read again and still names the over-cap pod (a pid
reused in between is left alone), and never the daemon itself.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final, Protocol

from flexnpu.errors import ValidationError
from flexnpu.npusmi import NpuProcess, parse_npu_smi_processes
from flexnpu.registration import Registration
from flexnpu.shim.core.memory import (
    MIB,
    ProcessUsage,
    Transition,
    Verdict,
    judge_pod_wide,
    judge_processes,
    transitions,
)
from flexnpu.shim.daemon.nvml import DEFAULT_LIBRARY, Nvml, NvmlError
from flexnpu.shim.grant import shm
from flexnpu.shim.grant.identity import pod_uid_of
from flexnpu.shim.grant.shmgrants import read_report

log = logging.getLogger(__name__)

NPU_SMI_TIMEOUT_S: Final = 20.0
MAX_OUTPUT_CHARS: Final = 4 << 20
ENFORCE_MODES: Final = ("report", "kill")
MEMORY_SOURCES: Final = ("auto", "npu-smi", "nvml", "slots")


class SourceError(Exception):
    """The source could not be read this round (the message says why)."""


class MemorySource(Protocol):
    def read(self, registrations: Sequence[Registration]) -> list[Verdict]:
        """Verdicts for ``registrations``; SourceError when nothing could be read."""
        ...


class NpuSmiSource:
    """Per-process usage from ``<command> info`` and pod UIDs from ``<proc_root>/<pid>/cgroup``."""

    def __init__(self, command: str, proc_root: Path = Path("/proc"), timeout_s: float = NPU_SMI_TIMEOUT_S) -> None:
        self.argv = [*shlex.split(command), "info"]
        self.proc_root = proc_root
        self.timeout_s = timeout_s

    def read(self, registrations: Sequence[Registration]) -> list[Verdict]:
        processes = [ProcessUsage(p.npu, p.chip, p.pid, p.memory_mib * MIB) for p in parse_processes(self._run())]
        pod_of = {p.pid: pod_uid_of(p.pid, self.proc_root) for p in processes}
        return judge_processes(registrations, processes, pod_of, protected=(os.getpid(),))

    def _run(self) -> str:
        try:
            done = subprocess.run(self.argv, capture_output=True, timeout=self.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
            raise SourceError(f"cannot run {shlex.join(self.argv)!r} ({exc})") from exc
        if done.returncode != 0:
            raise SourceError(f"{shlex.join(self.argv)!r} exited with {done.returncode}")
        if len(done.stdout) > MAX_OUTPUT_CHARS:
            raise SourceError(f"{shlex.join(self.argv)!r} printed more than {MAX_OUTPUT_CHARS} bytes")
        return done.stdout.decode("utf-8", errors="replace")


def parse_processes(text: str) -> list[NpuProcess]:
    """The process table of ``npu-smi info`` (flexnpu.npusmi); SourceError when the output is not understood."""
    try:
        return list(parse_npu_smi_processes(text))
    except ValidationError as exc:
        raise SourceError(f"cannot parse npu-smi output ({exc})") from exc


class NvmlSource:
    """Per-process usage of every GPU from NVML (``nvml.Nvml``) and pod UIDs from ``<proc_root>/<pid>/cgroup``."""

    def __init__(self, nvml: Nvml, proc_root: Path = Path("/proc")) -> None:
        self.nvml = nvml
        self.proc_root = proc_root

    def read(self, registrations: Sequence[Registration]) -> list[Verdict]:
        try:
            processes = self.nvml.processes()
        except NvmlError as exc:
            raise SourceError(str(exc)) from exc
        pod_of = {p.pid: pod_uid_of(p.pid, self.proc_root) for p in processes}
        return judge_processes(registrations, processes, pod_of, protected=(os.getpid(),))


class ShmSource:
    """Each registration's pod-wide account from its slot ``slot-<id>.shm`` in ``directory``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def read(self, registrations: Sequence[Registration]) -> list[Verdict]:
        used: dict[str, object] = {}
        for reg in registrations:
            try:
                slot = shm.Slot.open(os.path.join(self.directory, shm.slot_name(reg.flexnpu_id)))
            except (OSError, ValueError, shm.ShmError):
                continue  # no slot (yet), or not a slot: usage unknown
            try:
                used[reg.flexnpu_id] = read_report(slot.snapshot()).mem_used_bytes
            finally:
                slot.close()
        return judge_pod_wide(registrations, used)


Killer = Callable[[int], None]


def sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


class MemoryWatch:
    """The watch loop; ``poll()`` does one round (tests call it directly), ``start()`` runs it every interval."""

    def __init__(
        self,
        source: MemorySource,
        registrations: Callable[[], Sequence[Registration]],
        *,
        enforce: str = "report",
        interval_s: float = 5.0,
        proc_root: Path = Path("/proc"),
        killer: Killer = sigkill,
    ) -> None:
        if enforce not in ENFORCE_MODES:
            raise ValueError(f"enforce must be one of {ENFORCE_MODES}")
        self._source = source
        self._registrations = registrations
        self.enforce = enforce
        self.interval_s = interval_s
        self._proc_root = proc_root
        self._killer = killer
        self._lock = threading.Lock()
        self._latest: dict[str, Verdict] = {}
        self._over: dict[str, bool] = {}
        self._failing: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.killed: list[int] = []
        self._unkillable: set[int] = set()

    def figures(self) -> Mapping[str, Verdict]:
        """The latest verdict by flexnpu_id (empty until the first successful round)."""
        with self._lock:
            return dict(self._latest)

    def poll(self) -> list[Verdict]:
        """One round: read, judge, log transitions, kill under ``kill``; never raises for a bad source."""
        registrations = list(self._registrations())
        try:
            verdicts = self._source.read(registrations)
        except SourceError as exc:
            if self._failing is None:
                log.error("memory watch: %s (memory caps are not watched until it recovers)", exc)
            self._failing = str(exc)
            return []
        if self._failing is not None:
            log.info("memory watch: source readable again")
            self._failing = None
        with self._lock:
            changed, self._over = transitions(self._over, verdicts)
            self._latest = {v.flexnpu_id: v for v in verdicts}
        for change in changed:
            _log_transition(change, self.enforce)
        if self.enforce == "kill":
            for verdict in verdicts:
                if verdict.over_cap:
                    self._kill(verdict)
        return verdicts

    def _kill(self, verdict: Verdict) -> None:
        for pid in verdict.pids:
            if pid == os.getpid() or pid <= 1 or pod_uid_of(pid, self._proc_root) != verdict.pod_uid:
                continue  # gone, or the pid now belongs to someone else
            try:
                self._killer(pid)
            except OSError as exc:
                if pid not in self._unkillable:  # once per pid, not once per round
                    self._unkillable.add(pid)
                    log.warning(
                        "memory watch: cannot kill pid %d of registration %s (%s)",
                        pid,
                        verdict.flexnpu_id,
                        exc.strerror,
                    )
                continue
            self.killed.append(pid)
            log.warning(
                "event=MemoryOverCapKilled flexnpu_id=%s pod_uid=%s npu=%d chip=%d pid=%d used_mib=%.1f cap_mib=%.1f",
                verdict.flexnpu_id,
                verdict.pod_uid,
                verdict.npu,
                verdict.chip,
                pid,
                (verdict.used_bytes or 0) / MIB,
                verdict.cap_bytes / MIB,
            )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="memory watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # the watch must never take the daemon down
                log.exception("memory watch: round failed")
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=NPU_SMI_TIMEOUT_S + 5)


def _log_transition(change: Transition, enforce: str) -> None:
    v = change.verdict
    if change.over:
        log.warning(
            "event=MemoryOverCap flexnpu_id=%s pod_uid=%s npu=%d chip=%d used_mib=%.1f cap_mib=%.1f "
            "over_mib=%.1f action=%s pids=%s",
            v.flexnpu_id,
            v.pod_uid or "-",
            v.npu,
            v.chip,
            (v.used_bytes or 0) / MIB,
            v.cap_bytes / MIB,
            v.over_bytes / MIB,
            enforce,
            ",".join(map(str, v.pids)) or "-",
        )
    else:
        log.info(
            "event=MemoryUnderCap flexnpu_id=%s pod_uid=%s npu=%d chip=%d used_mib=%.1f cap_mib=%.1f",
            v.flexnpu_id,
            v.pod_uid or "-",
            v.npu,
            v.chip,
            (v.used_bytes or 0) / MIB,
            v.cap_bytes / MIB,
        )


def build_memory_watch(
    devices: str,
    npu_smi: str,
    socket_dir: str,
    registrations: Callable[[], Sequence[Registration]],
    enforce: str,
    interval_s: float,
    memory_source: str = "auto",
    nvml_library: str = DEFAULT_LIBRARY,
) -> MemoryWatch:
    """The watch the config describes (``auto``: npu-smi for ``devices = auto``, the slots for simulated cards)."""
    if memory_source not in MEMORY_SOURCES:
        raise ValueError(f"memory_source must be one of {MEMORY_SOURCES}")
    if memory_source == "auto":
        memory_source = "npu-smi" if devices == "auto" else "slots"
    source: MemorySource
    if memory_source == "npu-smi":
        source = NpuSmiSource(npu_smi)
    elif memory_source == "nvml":
        source = NvmlSource(Nvml(nvml_library))
    else:
        source = ShmSource(socket_dir)
    return MemoryWatch(source, registrations, enforce=enforce, interval_s=interval_s)
