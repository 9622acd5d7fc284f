"""The handshake's writes off the Allocate path: queued, merged per pod, retried, journaled, replayed after a crash;
and the node's claim cache that answers an Allocate without an API call."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from flexnpu import names
from flexnpu.deviceplugin.claimcache import ClaimCache
from flexnpu.deviceplugin.core.allocation import PodRef
from flexnpu.deviceplugin.core.handshake import allocation_annotations, failure_annotations, merge
from flexnpu.deviceplugin.handshake import HandshakeWriter
from flexnpu.deviceplugin.kube import KubeError, WatchExpired
from flexnpu.deviceplugin.nudge import ReleaseNudger

A = PodRef("team", "a", "uid-a")
B = PodRef("team", "b", "uid-b")
C = PodRef("team", "c", "uid-c")
JOIN_S = 30.0  # how long a test waits on a thread that should be done at once (a loaded machine is slow)


class Annotator:
    """The API's side of the writer: records each patch; ``fail`` maps pod uid -> statuses to raise, in turn;
    ``gate`` (when set) holds every patch until it is opened."""

    def __init__(self) -> None:
        self.patches: list[tuple[PodRef, dict[str, str | None]]] = []
        self.fail: dict[str, list[int]] = {}
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def annotate_pod(self, pod: PodRef, annotations: Mapping[str, str | None]) -> None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(JOIN_S), "the test never opened the gate"
        statuses = self.fail.get(pod.uid)
        if statuses:
            raise KubeError(f"patch {pod}: HTTP {statuses[0]}", statuses.pop(0))
        self.patches.append((pod, dict(annotations)))

    def of(self, pod: PodRef) -> list[dict[str, str | None]]:
        return [notes for ref, notes in self.patches if ref == pod]


def started(annotator: Annotator, journal: Path | None = None) -> HandshakeWriter:
    writer = HandshakeWriter(annotator, journal=journal)
    writer.start()
    return writer


def journal_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_write_lands_on_its_pod() -> None:
    api = Annotator()
    writer = started(api)
    writer.submit(A, {"k": "1"})
    assert writer.flush(JOIN_S)
    assert api.patches == [(A, {"k": "1"})]
    assert writer.pending == 0
    writer.stop()


def test_submit_returns_while_the_api_holds_the_patch_and_later_writes_merge_into_one() -> None:
    api = Annotator()
    api.gate = threading.Event()
    writer = started(api)
    writer.submit(A, {"k": "1"})
    assert api.entered.wait(JOIN_S)  # the first patch is in flight, held by the API

    def more() -> None:
        writer.submit(A, {"k": "2", "x": "old"})
        writer.submit(A, {"x": "new", "gone": None})
        writer.submit(B, {"k": "b"})

    submitter = threading.Thread(target=more)
    submitter.start()
    submitter.join(JOIN_S)
    assert not submitter.is_alive(), "submit waited for the API"
    assert writer.pending == 3  # A in flight, A's merged writes, B
    api.gate.set()
    assert writer.flush(JOIN_S)
    assert api.of(A) == [{"k": "1"}, {"k": "2", "x": "new", "gone": None}]
    assert api.of(B) == [{"k": "b"}]
    writer.stop()


def test_a_failed_write_is_retried_until_it_lands_and_keeps_its_place_before_later_ones() -> None:
    api = Annotator()
    api.fail[A.uid] = [503, 500]
    api.gate = threading.Event()
    writer = started(api)
    writer.submit(A, {"k": "1", "y": "1"})
    assert api.entered.wait(JOIN_S)
    writer.submit(A, {"k": "2"})  # queued while the first is in flight (and about to fail)
    api.gate.set()
    assert writer.flush(JOIN_S)
    assert api.of(A) == [{"k": "2", "y": "1"}]  # the later value of k, nothing of the first lost
    writer.stop()


@pytest.mark.parametrize("status", [400, 404, 422])
def test_a_write_that_can_never_land_is_dropped(status: int) -> None:
    api = Annotator()
    api.fail[A.uid] = [status]
    writer = started(api)
    writer.submit(A, {"k": "1"})
    writer.submit(B, {"k": "b"})
    assert writer.flush(JOIN_S)
    assert api.of(A) == []
    assert api.of(B) == [{"k": "b"}]
    writer.stop()


def test_flush_says_when_writes_are_still_pending() -> None:
    api = Annotator()
    api.fail[A.uid] = [503] * 1000
    writer = started(api)
    writer.submit(A, {"k": "1"})
    assert not writer.flush(0.3)
    assert writer.pending == 1
    writer.stop(timeout=0)


def test_writes_that_had_not_landed_before_a_crash_land_after_the_restart(tmp_path: Path) -> None:
    journal = tmp_path / "state" / "handshake.jsonl"
    api = Annotator()
    api.fail[A.uid] = [503] * 1000  # the API refuses A until the "crash"
    first = started(api, journal)
    first.submit(C, {"k": "c"})
    first.submit(A, {"k": "a1"})
    first.submit(A, {"k": "a2", "z": "1"})
    assert not first.flush(0.3)
    assert api.of(C) == [{"k": "c"}]
    first.stop(timeout=0)  # what a crash leaves: A's writes in the journal, not done

    with journal.open("a") as torn:
        torn.write('{"seq": 99, "namespace": "te')  # a crash mid-line

    api.fail.clear()
    second = HandshakeWriter(api, journal=journal)
    assert second.start() == 2
    assert second.flush(JOIN_S)
    assert api.of(C) == [{"k": "c"}]  # done before the crash: not patched again
    assert api.of(A) == [{"k": "a2", "z": "1"}]
    second.stop()

    third = HandshakeWriter(api, journal=journal)
    assert third.start() == 0  # everything landed: nothing to replay
    third.stop()


def test_the_journal_marks_what_landed_and_skips_lines_it_cannot_read(tmp_path: Path) -> None:
    journal = tmp_path / "handshake.jsonl"
    good = {"seq": 3, "namespace": "team", "name": "a", "uid": "uid-a", "annotations": {"k": "v", "gone": None}}
    journal.write_text(
        "\n".join(
            [
                "not json",
                json.dumps([1, 2]),
                json.dumps({"seq": True, "namespace": "n", "name": "x", "uid": "u", "annotations": {}}),
                json.dumps({"seq": 1, "namespace": "", "name": "x", "uid": "u", "annotations": {}}),
                json.dumps({"seq": 2, "namespace": "n", "name": "x", "uid": "u", "annotations": {"k": 5}}),
                json.dumps({"done": "3"}),
                json.dumps(good),
                "\x00\xff garbage",
                "",
            ]
        )
    )
    api = Annotator()
    writer = HandshakeWriter(api, journal=journal)
    assert writer.start() == 1
    assert writer.flush(JOIN_S)
    writer.stop()
    assert api.patches == [(A, {"k": "v", "gone": None})]
    lines = journal_lines(journal)
    assert lines[0]["seq"] == 3 and {"done": 3} in lines


def test_the_handshake_annotations() -> None:
    partial = allocation_annotations((), ["main"], done=False)
    assert names.ANNOTATION_BIND_PHASE not in partial
    assert partial[names.ANNOTATION_ALLOCATED_CONTAINERS]
    done = allocation_annotations((), ["main", "side"], done=True)
    assert done[names.ANNOTATION_BIND_PHASE] == "allocated"
    assert done[names.ANNOTATION_BIND_REASON] is None
    failed = failure_annotations("card 3 is not on this node")
    assert merge(failed, done)[names.ANNOTATION_BIND_PHASE] == "allocated"
    assert merge(done, failed)[names.ANNOTATION_BIND_REASON] == "card 3 is not on this node"


# -- the claim cache -------------------------------------------------------------------------------------------


def claim(uid: str, pod: PodRef, version: str, registration: str = "") -> dict[str, Any]:
    status = {"flexnpuId": registration} if registration else {}
    return {
        "metadata": {
            "name": f"{pod.name}-claim",
            "namespace": pod.namespace,
            "uid": uid,
            "resourceVersion": version,
            "labels": {names.LABEL_CLAIM_POD_UID: pod.uid},
        },
        "spec": {"podName": pod.name, "nodeName": "node-a", "npu": 0},
        "status": status,
    }


class ClaimApi:
    """A scripted API: lists, then watch streams fed by the test; a watch ends when the test says so."""

    def __init__(self, items: list[dict[str, Any]], version: str = "10") -> None:
        self.lists: list[str] = []
        self.items, self.version = items, version
        self.node_name = "node-a"
        self.list_error: KubeError | None = None
        self.events: list[tuple[str, Mapping[str, Any]] | KubeError | None] = []  # None ends a watch
        self.more = threading.Condition()
        self.watched_from: list[str] = []

    def node_claims(self) -> tuple[list[Mapping[str, Any]], str]:
        self.lists.append(self.version)
        if self.list_error is not None:
            raise self.list_error
        return list(self.items), self.version

    def watch_node_claims(self, version: str, timeout_s: int) -> Iterator[tuple[str, Mapping[str, Any]]]:
        self.watched_from.append(version)
        while True:
            with self.more:
                assert self.more.wait_for(lambda: self.events, JOIN_S)
                event = self.events.pop(0)
            if event is None:
                return
            if isinstance(event, KubeError):
                raise event
            yield event

    def send(self, *events: tuple[str, Mapping[str, Any]] | KubeError | None) -> None:
        with self.more:
            self.events.extend(events)
            self.more.notify_all()


def wait_until(cache: ClaimCache, check: Any) -> None:
    for _ in range(int(JOIN_S / 0.01)):
        if check():
            return
        cache.wait(0.01)
    raise AssertionError("the cache never got there")


def registrations(cache: ClaimCache, pod: PodRef) -> list[str] | None:
    claims = cache.claims_of(pod)
    return None if claims is None else sorted(c.flexnpu_id for c in claims)


class Marker:
    """The node's side of the nudger: the times it was marked."""

    def __init__(self) -> None:
        self.marks: list[str] = []

    def mark_claims_released(self, when: str) -> None:
        self.marks.append(when)


def test_the_claim_cache_follows_the_watch_and_lists_again_when_it_expires() -> None:
    api = ClaimApi([claim("c1", A, "5", "reg-1")])
    marker = Marker()
    cache = ClaimCache(api, retry_s=0.01, released=ReleaseNudger(marker, min_interval_s=0))  # type: ignore[arg-type]
    assert cache.claims_of(A) is None  # not synced: the plugin lists the pod's claims itself
    cache.start()
    try:
        wait_until(cache, lambda: cache.synced)
        assert registrations(cache, A) == ["reg-1"]
        assert registrations(cache, B) == []
        api.send(("ADDED", claim("c2", B, "11", "reg-2")))
        wait_until(cache, lambda: registrations(cache, B) == ["reg-2"])
        assert marker.marks == []  # nothing was released yet
        api.send(("DELETED", claim("c1", A, "12")))
        wait_until(cache, lambda: registrations(cache, A) == [])
        wait_until(cache, lambda: len(marker.marks) == 1)  # the node is marked: kube-scheduler retries its pods
        api.send(("BOOKMARK", {"metadata": {"resourceVersion": "20"}}), None)  # the server ends the watch
        wait_until(cache, lambda: api.watched_from[-1:] == ["20"])
        api.items = [claim("c3", C, "30", "reg-3")]
        api.version = "30"
        api.send(WatchExpired("too old", 410))
        wait_until(cache, lambda: api.watched_from[-1:] == ["30"])
        assert registrations(cache, B) == []  # the new list replaced what the old watch had shown
        assert registrations(cache, C) == ["reg-3"]
        assert api.watched_from == ["10", "20", "30"]
    finally:
        api.send(None)
        cache.stop()


def test_a_server_that_cannot_select_claims_by_node_leaves_the_plugin_listing_them() -> None:
    api = ClaimApi([])
    api.list_error = KubeError("list claims of this node: HTTP 400 Bad Request", 400)
    cache = ClaimCache(api, retry_s=0.01)  # type: ignore[arg-type]
    cache.start()
    try:
        wait_until(cache, lambda: len(api.lists) >= 1)
        assert cache.claims_of(A) is None
        assert not cache.synced
    finally:
        cache.stop()


def test_releases_during_a_mark_in_flight_get_one_more_mark_after_it() -> None:
    entered, gate = threading.Event(), threading.Event()
    marks: list[str] = []

    class SlowMarker:
        def mark_claims_released(self, when: str) -> None:
            entered.set()
            assert gate.wait(JOIN_S)
            marks.append(when)

    nudger = ReleaseNudger(SlowMarker(), min_interval_s=0)
    nudger.start()
    try:
        nudger.poke()
        assert entered.wait(JOIN_S)
        nudger.poke()  # while the first mark is in flight
        nudger.poke()
        gate.set()
        for _ in range(int(JOIN_S / 0.01)):
            if len(marks) == 2:
                break
            threading.Event().wait(0.01)
        assert len(marks) == 2 and marks[0] < marks[1]  # one more, not one per poke
    finally:
        nudger.stop()


def test_a_write_with_text_json_cannot_encode_as_utf8_survives_the_journal(tmp_path: Path) -> None:
    journal = tmp_path / "handshake.jsonl"
    api = Annotator()
    api.fail[A.uid] = [503] * 1000
    first = started(api, journal)
    first.submit(A, {"reason": "pod said \ud800 and NaN"})
    first.stop(timeout=0)
    api.fail.clear()
    second = HandshakeWriter(api, journal=journal)
    assert second.start() == 1
    assert second.flush(JOIN_S)
    second.stop()
    assert api.of(A) == [{"reason": "pod said \ud800 and NaN"}]
