"""The handshake's writes, off the Allocate path: journaled on the node, then patched onto the pod by one thread.

kubelet waits for Allocate; a merge patch through a loaded API server takes tens of milliseconds. So an Allocate
only appends its write to a local journal (a JSON line: it survives the plugin's crash, as the page cache keeps it)
and queues it; a writer thread patches the pods. Writes queued for one pod while an earlier one is in flight are
merged (the later value of a key wins: what applying them in order leaves), so a pod gets one patch per burst. A
write the API refuses for good (the pod is gone: 404; a body it rejects: 400, 422) is dropped with a log line;
any other failure is retried with backoff, never lost. At start the journal's writes not marked done are queued
again, and ``flush`` lets the plugin wait for them before kubelet can call it.

Journal lines: ``{"seq": N, "namespace", "name", "uid", "annotations"}`` for a write, ``{"done": N}`` once it
landed (or was dropped). A torn last line (a crash mid-write) or any unreadable line is skipped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from flexnpu.deviceplugin.core.allocation import PodRef
from flexnpu.deviceplugin.core.handshake import Annotations, merge
from flexnpu.deviceplugin.kube import KubeError

log = logging.getLogger(__name__)

DROP_STATUSES = frozenset({400, 404, 422})  # the write can never land: not worth a retry
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0
COMPACT_BYTES = 1 << 20  # an idle journal past this size is emptied (every write in it is done)


class PodAnnotator(Protocol):
    def annotate_pod(self, pod: PodRef, annotations: Mapping[str, str | None]) -> None: ...


@dataclass
class _Pending:
    pod: PodRef
    annotations: dict[str, str | None]
    seqs: list[int] = field(default_factory=list)
    not_before: float = 0.0
    backoff: float = 0.0


class HandshakeWriter:
    """Queues pod annotation writes (journaled when ``journal`` is set) and patches them from one thread."""

    def __init__(
        self,
        kube: PodAnnotator,
        journal: Path | None = None,
        on_change: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube = kube
        self._journal_path = journal
        self._journal: IO[str] | None = None
        self._on_change = on_change or (lambda pending: None)
        self._clock = clock
        self._lock = threading.Condition()
        self._pending: dict[str, _Pending] = {}  # pod uid -> merged writes, in arrival order
        self._in_flight: str | None = None
        self._seq = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- the plugin's side ---------------------------------------------------------------------------------

    def submit(self, pod: PodRef, annotations: Annotations) -> None:
        """Journal the write and queue it; returns at once."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._append({"seq": seq, **_pod_fields(pod), "annotations": dict(annotations)})
            self._queue(pod, annotations, seq)
            self._on_change(len(self._pending))
            self._lock.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued write has landed or been dropped; False when ``timeout`` passed first."""
        deadline = self._clock() + timeout
        with self._lock:
            while self._pending or self._in_flight is not None:
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.05))
        return True

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending) + (self._in_flight is not None)

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> int:
        """Open the journal, queue the writes it holds that never landed, start the writer; returns how many."""
        replayed = self._replay() if self._journal_path is not None else []
        if self._journal_path is not None:
            self._journal_path.parent.mkdir(parents=True, exist_ok=True)
            self._journal = self._journal_path.open("w", encoding="utf-8")  # rewritten with what is still to do
        with self._lock:
            for seq, pod, annotations in replayed:
                self._seq = max(self._seq, seq)
                self._append({"seq": seq, **_pod_fields(pod), "annotations": dict(annotations)})
                self._queue(pod, annotations, seq)
        if replayed:
            log.info("journal %s: %d write(s) that had not landed, queued again", self._journal_path, len(replayed))
        self._thread = threading.Thread(target=self._run, name="handshake-writer", daemon=True)
        self._thread.start()
        return len(replayed)

    def stop(self, timeout: float = 5.0) -> None:
        """Give queued writes up to ``timeout`` to land, then stop (what is left stays in the journal)."""
        self.flush(timeout)
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=RETRY_MAX_S + 1)
        with self._lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    # -- the writer thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                item = self._next()
                while item is None:
                    if self._stopping:
                        return
                    self._lock.wait(self._wait_for_next())
                    item = self._next()
                uid, write = item
                self._in_flight = uid
            landed, retry = self._patch(write)
            with self._lock:
                self._in_flight = None
                if landed:
                    for seq in write.seqs:
                        self._append({"done": seq})
                else:
                    self._requeue(uid, write, retry)
                self._compact()
                self._on_change(len(self._pending))
                self._lock.notify_all()

    def _patch(self, write: _Pending) -> tuple[bool, bool]:
        """(done, retry): landed or dropped for good is done; a failure worth another try is not."""
        try:
            self._kube.annotate_pod(write.pod, write.annotations)
        except KubeError as exc:
            if exc.status in DROP_STATUSES:
                log.warning("pod %s: handshake write dropped, it cannot land: %s", write.pod, exc)
                return True, False
            log.warning("pod %s: handshake write failed, retrying: %s", write.pod, exc)
            return False, True
        return True, False

    def _next(self) -> tuple[str, _Pending] | None:
        now = self._clock()
        for uid, write in self._pending.items():
            if write.not_before <= now:
                del self._pending[uid]
                return uid, write
        return None

    def _wait_for_next(self) -> float | None:
        if not self._pending:
            return None
        return max(0.001, min(w.not_before for w in self._pending.values()) - self._clock())

    def _queue(self, pod: PodRef, annotations: Annotations, seq: int) -> None:
        queued = self._pending.get(pod.uid)
        if queued is None:
            self._pending[pod.uid] = _Pending(pod, dict(annotations), [seq])
        else:
            queued.annotations = merge(queued.annotations, annotations)
            queued.seqs.append(seq)

    def _requeue(self, uid: str, write: _Pending, retry: bool) -> None:
        """A failed write back in the queue, before anything queued for the pod while it was in flight."""
        write.backoff = min(RETRY_MAX_S, max(RETRY_FIRST_S, write.backoff * 2))
        write.not_before = self._clock() + write.backoff
        later = self._pending.pop(uid, None)
        if later is not None:
            write.annotations = merge(write.annotations, later.annotations)
            write.seqs.extend(later.seqs)
        self._pending[uid] = write

    # -- the journal -----------------------------------------------------------------------------------------

    def _append(self, line: Mapping[str, Any]) -> None:
        if self._journal is None:
            return
        try:
            self._journal.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._journal.flush()
        except OSError as exc:  # a full disk must not fail the Allocate: the write is still queued in memory
            log.error("journal %s: %s", self._journal_path, exc)

    def _compact(self) -> None:
        if self._journal is None or self._pending or self._in_flight is not None:
            return
        try:
            if self._journal.tell() > COMPACT_BYTES:
                self._journal.seek(0)
                self._journal.truncate()
        except OSError as exc:
            log.error("journal %s: %s", self._journal_path, exc)

    def _replay(self) -> list[tuple[int, PodRef, dict[str, str | None]]]:
        assert self._journal_path is not None
        try:
            text = self._journal_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        writes: dict[int, tuple[PodRef, dict[str, str | None]]] = {}
        done: set[int] = set()
        for number, raw in enumerate(text.splitlines(), 1):
            entry = _journal_entry(raw)
            if entry is None:
                if raw.strip():
                    log.warning("journal %s line %d: not a journal entry, skipped", self._journal_path, number)
                continue
            if isinstance(entry, int):
                done.add(entry)
            else:
                seq, pod, annotations = entry
                writes[seq] = (pod, annotations)
        return [(seq, pod, notes) for seq, (pod, notes) in sorted(writes.items()) if seq not in done]


def _pod_fields(pod: PodRef) -> dict[str, str]:
    return {"namespace": pod.namespace, "name": pod.name, "uid": pod.uid}


def _journal_entry(raw: str) -> int | tuple[int, PodRef, dict[str, str | None]] | None:
    """A ``done`` mark (its seq), a write, or None for a line that is neither."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    if set(entry) == {"done"}:
        done = entry["done"]
        return done if isinstance(done, int) and not isinstance(done, bool) else None
    seq, notes = entry.get("seq"), entry.get("annotations")
    fields = [entry.get(k) for k in ("namespace", "name", "uid")]
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(notes, dict):
        return None
    if not all(isinstance(f, str) and f for f in fields):
        return None
    if not all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in notes.items()):
        return None
    namespace, name, uid = fields
    assert isinstance(namespace, str) and isinstance(name, str) and isinstance(uid, str)
    return seq, PodRef(namespace=namespace, name=name, uid=uid), notes
