"""This node's VNpuClaims, kept by a list and a watch, so that an Allocate reads a pod's claims without a call.

The claims are selected by the CRD's selectable field ``spec.nodeName`` (Kubernetes 1.31+; the chart's CRD
declares it). Until the first list is in, or when the API server cannot select by that field (HTTP 400: an older
server, or a CRD installed without it), ``claims_of`` answers None and the plugin lists the pod's claims itself, as
it did before there was a cache. A broken watch lists again (after ``retry_s``); a watch that expired (410) at
once. ``wait`` wakes a waiting Allocate as soon as a claim arrives. ``released`` (started and stopped with the
cache) is poked after a claim is gone, to tell kube-scheduler (flexnpu.deviceplugin.nudge).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from flexnpu import names
from flexnpu.deviceplugin.core.allocation import PodRef
from flexnpu.deviceplugin.core.containers import PodClaim
from flexnpu.deviceplugin.core.pods import read_pod_claims
from flexnpu.deviceplugin.kube import KubeApi, KubeError, WatchExpired
from flexnpu.deviceplugin.nudge import ReleaseNudger

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 300  # the server ends each watch after this (plus its jitter); the cache watches again


class ClaimCache:
    def __init__(self, kube: KubeApi, retry_s: float = 2.0, released: ReleaseNudger | None = None) -> None:
        self._kube = kube
        self._retry_s = retry_s
        self._released = released
        self._changed = threading.Condition()
        self._claims: dict[str, Mapping[str, Any]] = {}  # claim uid -> the claim's JSON
        self._by_pod: dict[str, set[str]] = {}  # pod uid (the claim's label) -> claim uids
        self._synced = False
        self._unserved = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def synced(self) -> bool:
        return self._synced

    def claims_of(self, pod: PodRef) -> list[PodClaim] | None:
        """The pod's claims as the watch last showed them; None when the cache cannot answer (not synced)."""
        with self._changed:
            if not self._synced:
                return None
            items = [self._claims[uid] for uid in self._by_pod.get(pod.uid, ())]
        return read_pod_claims(items, pod, self._kube.node_name)

    def wait(self, timeout: float) -> None:
        """Return when a claim changed, or after ``timeout``."""
        with self._changed:
            self._changed.wait(timeout)

    def start(self) -> None:
        if self._released is not None:
            self._released.start()
        self._thread = threading.Thread(target=self._run, name="claim-cache", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)  # a watch blocked in a read ends with the process (daemon thread)
        if self._released is not None:
            self._released.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._list()
                while not self._stop.is_set():
                    version = self._watch(version)
            except WatchExpired:
                continue
            except KubeError as exc:
                self._set_unsynced()
                if exc.status == 400 and not self._unserved:
                    self._unserved = True
                    log.warning(
                        "the API server cannot select VNpuClaims by spec.nodeName (%s): Allocate lists each "
                        "pod's claims instead (install the chart's CRD on Kubernetes 1.31+ for the cache)",
                        exc,
                    )
                elif exc.status != 400:
                    log.warning("claims of this node: %s; listing again in %.1fs", exc, self._retry_s)
                self._stop.wait(self._retry_s * (30 if exc.status == 400 else 1))

    def _list(self) -> str:
        items, version = self._kube.node_claims()
        with self._changed:
            self._claims, self._by_pod = {}, {}
            for claim in items:
                self._put(claim)
            self._synced = True
            self._changed.notify_all()
        return version

    def _watch(self, version: str) -> str:
        """One watch from ``version``; the resourceVersion it reached."""
        for kind, claim in self._kube.watch_node_claims(version, WATCH_TIMEOUT_S):
            if self._stop.is_set():
                break
            version = _version(claim) or version
            if kind == "BOOKMARK":
                continue
            with self._changed:
                if kind == "DELETED":
                    self._drop(claim)
                else:
                    self._put(claim)
                self._changed.notify_all()
            if kind == "DELETED" and self._released is not None:
                self._released.poke()
        return version

    def _set_unsynced(self) -> None:
        with self._changed:
            self._synced = False

    def _put(self, claim: Mapping[str, Any]) -> None:
        uid, pod_uid = _uid(claim), _pod_uid(claim)
        if not uid:
            return
        self._drop(claim)
        self._claims[uid] = claim
        if pod_uid:
            self._by_pod.setdefault(pod_uid, set()).add(uid)

    def _drop(self, claim: Mapping[str, Any]) -> None:
        uid = _uid(claim)
        old = self._claims.pop(uid, None)
        if old is None:
            return
        owners = self._by_pod.get(_pod_uid(old))
        if owners is not None:
            owners.discard(uid)
            if not owners:
                del self._by_pod[_pod_uid(old)]


def _meta(claim: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = claim.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _uid(claim: Mapping[str, Any]) -> str:
    uid = _meta(claim).get("uid")
    return uid if isinstance(uid, str) else ""


def _version(claim: Mapping[str, Any]) -> str:
    version = _meta(claim).get("resourceVersion")
    return version if isinstance(version, str) else ""


def _pod_uid(claim: Mapping[str, Any]) -> str:
    labels = _meta(claim).get("labels")
    value = labels.get(names.LABEL_CLAIM_POD_UID) if isinstance(labels, Mapping) else None
    return value if isinstance(value, str) else ""
