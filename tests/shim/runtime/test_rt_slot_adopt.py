"""Registration slots survive a flexnpud restart: adopted in place (same inode), indexes kept, orphans removed.

A pod's processes map their slot once and the node component bind-mounts the slot file into the container, so a
restarted daemon must use the very file (inode) the previous one made. These tests drive ``ShmGrants`` and the
grant server on a manual clock over one shim directory, with fake tenants writing their slots through
``flexnpu.shim.grant.shm`` (what libflexnpu does in C), hostile values and files included.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rt_helpers import CARD, ManualClock, registration

from flexnpu.registration import Registration
from flexnpu.shim.core.slicing import SlicePolicy
from flexnpu.shim.grant import shm
from flexnpu.shim.grant.server import SLOT_CHARGE_GRACE_US, GrantServer
from flexnpu.shim.grant.shmgrants import MAX_SLOT_INDEX, ShmGrants, adopted_index, orphan_slots

SLICE_US = 2000
QUOTA = 10
PID_START = (4242 << 32) | 7
MakeServer = Callable[[list[Registration]], GrantServer]


@pytest.fixture
def shm_dir(tmp_path: Path) -> Path:
    return tmp_path / "shim"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_server(grant_socket: str, shm_dir: Path, clock: ManualClock, tmp_path: Path) -> Iterator[MakeServer]:
    """A grant server on the shim directory; each call is a daemon (re)start, with the restored registrations."""
    servers: list[GrantServer] = []

    def make(registrations: list[Registration]) -> GrantServer:
        server = GrantServer(
            grant_socket,
            SlicePolicy(quota=QUOTA, slice_us=SLICE_US),
            [CARD],
            proc_root=tmp_path,
            clock_us=clock,
            timer=False,
            shm_dir=str(shm_dir),
            daemon_pid_start=PID_START + len(servers),
        )
        server.start()
        servers.append(server)
        server.set_registrations(registrations)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def slots() -> Iterator[Callable[[Path], shm.Slot]]:
    """A tenant's mapping of its slot file, as libflexnpu keeps it across daemon restarts."""
    opened: list[shm.Slot] = []

    def open_slot(path: Path) -> shm.Slot:
        slot = shm.Slot.open(str(path))
        opened.append(slot)
        return slot

    yield open_slot
    for slot in opened:
        slot.close()


def slot_path(shm_dir: Path, flexnpu_id: str) -> Path:
    return shm_dir / shm.slot_name(flexnpu_id)


def holder(shm_dir: Path) -> int:
    region = shm.open_card(str(shm_dir), 0)
    assert region is not None
    try:
        return region.state().holder
    finally:
        region.close()


# ----- the decisions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hint", "taken", "next_index", "chosen"),
    [
        (None, set(), 0, (0, 1)),  # a slot made anew: the next fresh index
        (None, {0, 1}, 2, (2, 3)),
        (5, set(), 0, (5, 6)),  # an adopted slot keeps its index; fresh ones come after it
        (1, {0, 3}, 4, (1, 4)),  # below the fresh ones, free: kept, the next fresh index stays
        (3, {3}, 4, (4, 5)),  # another slot has it (a pod copied a neighbour's index): a fresh one
        (shm.NO_HOLDER, set(), 2, (2, 3)),  # "nobody" is never a slot's index
        (MAX_SLOT_INDEX, set(), 2, (2, 3)),  # out of range: a lie
        (MAX_SLOT_INDEX - 1, set(), 2, (MAX_SLOT_INDEX - 1, MAX_SLOT_INDEX)),
        (None, {7, 8}, 7, (9, 10)),  # the next index is never one that is taken
    ],
)
def test_an_adopted_slot_keeps_its_index_unless_it_is_taken_or_out_of_range(
    hint: int | None, taken: set[int], next_index: int, chosen: tuple[int, int]
) -> None:
    assert adopted_index(hint, taken, next_index) == chosen


@pytest.mark.parametrize(
    ("names", "owned", "orphans"),
    [
        (["card-0.grant", "grant.sock", "slot-a.shm", "slot-b.shm"], {"slot-a.shm"}, ["slot-b.shm"]),
        (["slot-a.shm.tmp123", "slot-a.shm"], {"slot-a.shm"}, ["slot-a.shm.tmp123"]),  # a crashed creation
        (["slot-h0123456789abcdef.shm"], set(), ["slot-h0123456789abcdef.shm"]),
        (["slot-.shm", "slot-a.shm.bak", "xslot-a.shm", "slot-a.shmx", "card-0.grant.tmp9"], set(), []),
        (["slot-a\nb.shm"], set(), ["slot-a\nb.shm"]),  # a name with a newline is still a slot file
        ([], {"slot-a.shm"}, []),
    ],
)
def test_orphan_slots_are_the_slot_files_no_registration_owns(
    names: list[str], owned: set[str], orphans: list[str]
) -> None:
    assert orphan_slots(names, owned) == orphans


# ----- a restart -----------------------------------------------------------------------------------------------


def test_a_graceful_restart_keeps_each_slot_file_its_index_and_the_pods_figures(
    make_server: MakeServer, shm_dir: Path, slots: Callable[[Path], shm.Slot]
) -> None:
    regs = [registration("a", units=5), registration("b", units=2), registration("c", units=3)]
    first = make_server(regs)
    inodes = {r.flexnpu_id: slot_path(shm_dir, r.flexnpu_id).stat().st_ino for r in regs}
    mapped = {r.flexnpu_id: slots(slot_path(shm_dir, r.flexnpu_id)) for r in regs}
    indexes = {f: slot.get("slot_index") for f, slot in mapped.items()}
    assert len(set(indexes.values())) == 3
    a = mapped["a"]
    a.set("mem_used_bytes", 3 << 20)
    a.set("denied_allocs", 2)
    a.set("reclaimed_bytes", 5 << 20)
    a.set("yield_epoch", 99)

    first.stop()
    assert sorted(os.listdir(shm_dir)) == sorted(shm.slot_name(r.flexnpu_id) for r in regs)  # no card region
    # Restored in another order, and a's share changed meanwhile: the daemon fields are rewritten.
    second = make_server([regs[2], registration("a", units=2), regs[1]])
    assert {f: slot_path(shm_dir, f).stat().st_ino for f in inodes} == inodes
    assert {f: slot.get("slot_index") for f, slot in mapped.items()} == indexes  # what the pods' gates compare
    assert (a.get("share_permille"), a.get("yield_epoch")) == (200, 0)  # no epoch of the new daemon given back
    assert second.stats()["a"]["memory_used_mib"] == 3.0  # the pod's account survives with its memory
    assert second.stats()["a"]["denied_allocs"] == 2.0
    assert second.stats()["a"]["memory_reclaimed_mib"] == 5.0


def test_a_restarted_daemon_grants_a_want_written_before_it_started_and_charges_only_new_usage(
    make_server: MakeServer, shm_dir: Path, clock: ManualClock, slots: Callable[[Path], shm.Slot]
) -> None:
    first = make_server([registration("a")])
    a = slots(slot_path(shm_dir, "a"))
    a.set("want", 1)
    first.run_timers()
    assert holder(shm_dir) == a.get("slot_index")
    a.set("used_ns", 3_600 * 10**9)  # an hour of device time over the pod's life, charged by the first daemon
    first.stop()  # the pod keeps wanting the card while no daemon runs (it paces itself locally)

    second = make_server([registration("a")])
    second.run_timers()
    assert holder(shm_dir) == a.get("slot_index")  # the want in the same file, seen by the new daemon
    a.set("used_ns", a.get("used_ns") + 1_500_000)
    a.set("want", 0)
    clock.now_us += SLICE_US
    second.run_timers()
    # Counted from what the slot said when the new daemon first saw it: the slice held, not the pod's lifetime.
    assert second.stats()["a"]["device_time_us"] == SLICE_US


@pytest.mark.parametrize(
    ("rewritten_ns", "charged_us"),
    [
        (0, SLICE_US),  # the pod zeroed its counter during the restart: still charged the time it held
        ((1 << 64) - 1, SLICE_US),  # or claimed the age of the universe before the daemon read it: the baseline
    ],
)
def test_a_pod_that_rewrote_its_usage_across_a_restart_gains_nothing(
    make_server: MakeServer,
    shm_dir: Path,
    clock: ManualClock,
    slots: Callable[[Path], shm.Slot],
    rewritten_ns: int,
    charged_us: int,
) -> None:
    make_server([registration("a")]).stop()
    a = slots(slot_path(shm_dir, "a"))
    a.set("used_ns", 5 * 10**9)
    a.set("used_ns", rewritten_ns)
    a.set("want", 1)
    second = make_server([registration("a")])
    second.run_timers()
    assert holder(shm_dir) == a.get("slot_index")
    a.set("want", 0)
    clock.now_us += SLICE_US
    second.run_timers()
    assert second.stats()["a"]["device_time_us"] == charged_us


def test_a_lie_past_the_baseline_after_a_restart_is_clamped_as_in_a_running_daemon(
    make_server: MakeServer, shm_dir: Path, clock: ManualClock, slots: Callable[[Path], shm.Slot]
) -> None:
    make_server([registration("a")]).stop()
    a = slots(slot_path(shm_dir, "a"))
    second = make_server([registration("a")])
    a.set("want", 1)
    second.run_timers()
    a.set("used_ns", (1 << 64) - 1)
    a.set("want", 0)
    clock.now_us += SLICE_US
    second.run_timers()
    assert second.stats()["a"]["device_time_us"] == SLICE_US + SLOT_CHARGE_GRACE_US


def test_slots_of_a_crashed_daemon_are_adopted_and_orphans_removed(
    shm_dir: Path, slots: Callable[[Path], shm.Slot]
) -> None:
    crashed = ShmGrants(str(shm_dir), [CARD], PID_START)
    crashed.start()
    crashed.sync([registration("a"), registration("gone")], QUOTA)  # never stopped: a SIGKILL leaves it all
    a = slots(slot_path(shm_dir, "a"))
    (shm_dir / f"{shm.slot_name('b')}.tmp77").write_bytes(b"")  # a crash between a creation's write and rename
    inode = slot_path(shm_dir, "a").stat().st_ino
    a.set("slot_index", shm.NO_HOLDER)  # what the pod may write: the daemon's fields are rewritten anyway

    restarted = ShmGrants(str(shm_dir), [CARD], PID_START + 1)
    restarted.start()
    try:
        restarted.sync([registration("a"), registration("b")], QUOTA)
        assert sorted(os.listdir(shm_dir)) == ["card-0.grant", shm.slot_name("a"), shm.slot_name("b")]
        assert slot_path(shm_dir, "a").stat().st_ino == inode
        assert a.get("slot_index") == restarted.slot_index("a") != shm.NO_HOLDER
        assert restarted.slot_index("b") != restarted.slot_index("a")
        restarted.sync([registration("b")], QUOTA)  # a deregistration still removes the slot
        assert not slot_path(shm_dir, "a").exists()
    finally:
        restarted.stop()
        crashed.stop()


def test_two_adopted_slots_claiming_one_index_get_two_indexes(
    make_server: MakeServer, shm_dir: Path, slots: Callable[[Path], shm.Slot]
) -> None:
    first = make_server([registration("a"), registration("b")])
    a, b = slots(slot_path(shm_dir, "a")), slots(slot_path(shm_dir, "b"))
    first.stop()
    b.set("slot_index", a.get("slot_index"))  # b copies its neighbour's index while no daemon runs
    second = make_server([registration("b"), registration("a")])
    assert a.get("slot_index") != b.get("slot_index")
    a.set("want", 1)
    second.run_timers()
    assert holder(shm_dir) == a.get("slot_index")  # b's processes do not see a's grant as their own


# ----- hostile files -------------------------------------------------------------------------------------------


def _symlink_to_a_valid_slot(path: Path, tmp_path: Path) -> Path:
    target = tmp_path / "elsewhere.shm"
    shm.Slot.create(str(target), slot_index=42, card_index=0, mem_cap_bytes=1, share_permille=1, priority=0).close()
    path.symlink_to(target)
    return target


def _truncated(path: Path, tmp_path: Path) -> None:
    with path.open("r+b") as stream:
        stream.truncate(100)


def _wrong_magic(path: Path, tmp_path: Path) -> None:
    with path.open("r+b") as stream:
        stream.write(b"\0\0\0\0")


def _wrong_version(path: Path, tmp_path: Path) -> None:
    with path.open("r+b") as stream:
        stream.seek(4)
        stream.write((shm.VERSION + 1).to_bytes(4, "little"))


def _fifo(path: Path, tmp_path: Path) -> None:
    os.mkfifo(path)


@pytest.mark.parametrize(
    "spoil",
    [_truncated, _wrong_magic, _wrong_version],
    ids=["truncated", "wrong-magic", "wrong-version"],
)
def test_a_spoilt_slot_file_is_made_afresh(
    make_server: MakeServer, shm_dir: Path, tmp_path: Path, spoil: Callable[[Path, Path], None]
) -> None:
    make_server([registration("a")]).stop()
    path = slot_path(shm_dir, "a")
    inode = path.stat().st_ino
    spoil(path, tmp_path)
    make_server([registration("a")])
    assert path.stat().st_size == shm.SHM_SIZE and path.stat().st_ino != inode
    slot = shm.Slot.open(str(path))  # a valid slot again, with zeroed tenant fields
    try:
        assert (slot.get("used_ns"), slot.get("mem_used_bytes"), slot.get("share_permille")) == (0, 0, 500)
    finally:
        slot.close()


@pytest.mark.parametrize("plant", [_symlink_to_a_valid_slot, _fifo], ids=["symlink", "fifo"])
def test_a_slot_path_that_is_not_a_regular_file_is_replaced_never_followed(
    make_server: MakeServer, shm_dir: Path, tmp_path: Path, plant: Callable[[Path, Path], Path | None]
) -> None:
    make_server([registration("a")]).stop()
    path = slot_path(shm_dir, "a")
    path.unlink()
    target = plant(path, tmp_path)
    before = target.read_bytes() if target else b""
    server = make_server([registration("a")])
    assert path.is_file() and not path.is_symlink()
    if target is not None:
        assert target.read_bytes() == before  # the symlink's target was never written
    slot = shm.Slot.open(str(path))
    try:
        slot.set("want", 1)
        server.run_timers()
        assert holder(shm_dir) == slot.get("slot_index")  # the new file is the registration's slot
    finally:
        slot.close()


def test_an_orphan_symlink_is_removed_and_its_target_kept(
    make_server: MakeServer, shm_dir: Path, tmp_path: Path
) -> None:
    shm_dir.mkdir()
    target = _symlink_to_a_valid_slot(slot_path(shm_dir, "ghost"), tmp_path)
    make_server([registration("a")])
    assert not slot_path(shm_dir, "ghost").is_symlink() and target.is_file()


def test_a_directory_in_the_way_of_an_orphan_sweep_stays_and_the_daemon_serves(
    make_server: MakeServer, shm_dir: Path, slots: Callable[[Path], shm.Slot]
) -> None:
    (shm_dir / shm.slot_name("ghost")).mkdir(parents=True)
    server = make_server([registration("a")])
    a = slots(slot_path(shm_dir, "a"))
    a.set("want", 1)
    server.run_timers()
    assert holder(shm_dir) == a.get("slot_index")
