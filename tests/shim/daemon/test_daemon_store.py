"""Persistence of registrations: atomic round trip, corrupt files moved aside and reported, never dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexnpu.priority import Priority
from flexnpu.registration import Registration
from flexnpu.shim.daemon.store import RegistrationStore, StoreError

REGS = [
    Registration("0", "train", npu=0, aicore_alloc=2, memory_alloc=16384, priority=Priority.HIGH, pod_uid="u-1"),
    Registration("db", "", npu=1, aicore_alloc=8, memory_alloc=0, chip=0),
]


def test_round_trip(tmp_path: Path) -> None:
    store = RegistrationStore(tmp_path / "state" / "registrations.json")
    assert store.load().registrations == []
    store.save(REGS)
    loaded = RegistrationStore(store.path).load()
    assert loaded.registrations == REGS and loaded.problems == []
    store.save(REGS[1:])
    assert store.load().registrations == REGS[1:]
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["registrations.json"]  # no temp file left


@pytest.mark.parametrize(
    "content", [b"{", b"[]", b'{"version": 2, "registrations": []}', b'{"version": 1}', b"\x00\x01", b"\xff\xfe{}", b""]
)
def test_corrupt_file_is_moved_aside_and_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "registrations.json"
    path.write_bytes(content)
    loaded = RegistrationStore(path).load()
    assert loaded.registrations == []
    assert len(loaded.problems) == 1 and str(path) in loaded.problems[0] and "corrupt" in loaded.problems[0]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("registrations.json.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == content and str(aside[0]) in loaded.problems[0]
    assert not path.exists()


def test_invalid_entries_are_reported_and_the_original_kept(tmp_path: Path) -> None:
    path = tmp_path / "registrations.json"
    good = REGS[0].to_body()
    document = {"version": 1, "registrations": [good, {"flexnpu_id": "x", "npu": -1, "aicore_alloc": 1}]}
    path.write_text(json.dumps(document))
    loaded = RegistrationStore(path).load()
    assert loaded.registrations == [REGS[0]]
    assert any("entry 1" in p and "npu" in p for p in loaded.problems)
    kept = [p for p in tmp_path.iterdir() if ".invalid-" in p.name]
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == document


def test_write_failure_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot be written"):
        RegistrationStore(blocker / "registrations.json").save(REGS)


def test_an_unreadable_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "registrations.json"
    path.mkdir()  # reading a directory fails even as root
    with pytest.raises(StoreError, match="cannot be read"):
        RegistrationStore(path).load()


def test_a_failed_rename_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "registrations.json"
    (path / "occupied").mkdir(parents=True)  # a non-empty directory where the file goes: the rename fails
    with pytest.raises(StoreError, match="cannot be written"):
        RegistrationStore(path).save(REGS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registrations.json"]


def test_files_moved_aside_in_the_same_second_get_distinct_names(tmp_path: Path) -> None:
    path = tmp_path / "registrations.json"
    for content in (b"{", b"["):
        path.write_bytes(content)
        assert RegistrationStore(path).load().registrations == []
    aside = sorted(p for p in tmp_path.iterdir() if ".corrupt-" in p.name)
    assert len(aside) == 2 and {p.read_bytes() for p in aside} == {b"{", b"["}
