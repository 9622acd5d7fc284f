"""Tell kube-scheduler that units came free on this node when a VNpuClaim of the node is gone.

The extender counts a claim whose pod is gone on its card until the claim itself is gone (flexnpud holds its units
until the operator deregisters it). A pod refused in the meantime is parked by kube-scheduler as unschedulable, and
kube-scheduler watches no claims: without an event it would wait there for minutes. So after a claim of this node
is gone, the device plugin writes the node's ``flexnpu.io/claims-released`` annotation (the time): a node update,
which moves parked pods back to the scheduling queue. One writer thread; deletions that come while a write is in
flight are covered by one more write after it, and writes are at least ``min_interval_s`` apart.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Protocol

from flexnpu.deviceplugin.kube import KubeError

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.2


class NodeMarker(Protocol):
    def mark_claims_released(self, when: str) -> None: ...


class ReleaseNudger:
    def __init__(self, kube: NodeMarker, min_interval_s: float = MIN_INTERVAL_S) -> None:
        self._kube = kube
        self._min_interval_s = min_interval_s
        self._poked = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.writes = 0

    def poke(self) -> None:
        """A claim of this node is gone (returns at once)."""
        self._poked.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="release-nudger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._poked.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            self._poked.wait()
            if self._stop.is_set():
                return
            self._poked.clear()
            try:
                self._kube.mark_claims_released(datetime.now(UTC).isoformat(timespec="microseconds"))
                self.writes += 1
            except KubeError as exc:
                log.warning("node not marked after a claim was released (pods may wait for a retry): %s", exc)
            if self._stop.wait(self._min_interval_s):
                return
