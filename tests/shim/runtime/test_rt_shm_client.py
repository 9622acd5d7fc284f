"""The Python runtime's shared-memory grant client (``flexnpu.shim.runtime.shm_client``), the tenant side of the
protocol in ``flexnpu.shim.grant.shm``: the test is flexnpud here (it creates the card region and the slot with
shm.py and decides when to grant), the client runs in a thread of the test or in a child process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rt_helpers import registration, runtime_env, wait_for

from flexnpu.shim.grant import shm
from flexnpu.shim.grant.server import GrantServer
from flexnpu.shim.runtime import shm_client
from flexnpu.shim.runtime.activation import RuntimeConfig
from flexnpu.shim.runtime.grant_client import GrantClient, GrantRefusedError, Lease
from flexnpu.shim.runtime.shm_client import ShmGrantClient, make_grants
from flexnpu.shim.runtime.slicer import METER_DECLARED, Slicer

FOREVER_NS = 2**63
SLOT = 5


@pytest.fixture
def shim(tmp_path: Path) -> Path:
    directory = tmp_path / "shim"
    directory.mkdir()
    return directory


@pytest.fixture
def card(shim: Path) -> Iterator[shm.CardRegion]:
    region = shm.CardRegion.create(str(shim / shm.card_name(0)), 1 << 32)
    os.chmod(region.path, 0o444)  # tenants may only read it: the client maps it read-only
    yield region
    region.close()


@pytest.fixture
def slot(shim: Path) -> Iterator[shm.Slot]:
    s = shm.Slot.create(
        str(shim / shm.slot_name("tenant")),
        slot_index=SLOT,
        card_index=0,
        mem_cap_bytes=1 << 30,
        share_permille=500,
        priority=1,
    )
    yield s
    s.close()


@pytest.fixture
def client(shim: Path, slot: shm.Slot, tmp_path: Path) -> Iterator[ShmGrantClient]:
    c = ShmGrantClient(str(shim), "tenant", str(tmp_path / "nobody.sock"), 0.5)
    yield c
    c.close()


def in_thread(call: Callable[[], Lease]) -> tuple[threading.Thread, list[Lease]]:
    got: list[Lease] = []
    thread = threading.Thread(target=lambda: got.append(call()), daemon=True)
    thread.start()
    return thread, got


def test_acquire_wants_the_card_and_blocks_until_the_grant_word_names_the_slot(
    card: shm.CardRegion, slot: shm.Slot, client: ShmGrantClient
) -> None:
    bell = slot.get("doorbell")
    thread, got = in_thread(client.acquire)
    wait_for(lambda: slot.get("want") == 1 and slot.get("doorbell") == bell + 1, "the want and its doorbell")
    card.publish(SLOT + 1, 1, FOREVER_NS)  # another tenant's grant: still waiting
    thread.join(0.2)
    assert thread.is_alive() and got == []
    card.publish(SLOT, 2, FOREVER_NS)
    thread.join(10)
    assert not thread.is_alive()
    (lease,) = got
    assert (lease.seq, lease.local) == (2, False)
    assert slot.get("want") == 0  # seen the grant: the wish is answered
    assert not client.revoked()
    card.publish(SLOT + 1, 3, FOREVER_NS)
    assert client.revoked()  # the next launch boundary sees it: no syscall, the grant word alone


def test_a_holder_treats_its_grant_as_revoked_while_the_cards_preemptor_wants(
    shim: Path, card: shm.CardRegion, slot: shm.Slot, client: ShmGrantClient
) -> None:
    preemptor = shm.Slot.create(
        str(shim / shm.slot_name("critical")),
        slot_index=SLOT + 1,
        card_index=0,
        mem_cap_bytes=1 << 30,
        share_permille=300,
        priority=2,
    )
    try:
        card.publish(SLOT, 2, FOREVER_NS)
        client.acquire()
        card.set("preempt", SLOT + 2)  # flexnpud names the critical registration
        assert not client.revoked()  # it does not want the card: the holder goes on
        preemptor.set("want", 1)
        assert client.revoked()  # its grant word is the holder's still, but the preemptor comes first
        preemptor.set("want", 0)
        assert not client.revoked()
        card.set("preempt", SLOT + 1)  # itself named: nobody to give way to
        preemptor.set("want", 1)
        assert not client.revoked()
    finally:
        preemptor.close()


def test_a_launch_near_the_deadline_wants_the_card_already(
    card: shm.CardRegion, slot: shm.Slot, client: ShmGrantClient
) -> None:
    now = [10**12]
    client._clock_ns = lambda: now[0]
    card.publish(SLOT, 4, now[0] + 10_000_000)
    client.acquire()
    assert slot.get("want") == 0
    now[0] += 10_000_000 - shm_client.RENEW_US * 1000 + 1
    assert not client.revoked() and slot.get("want") == 1  # flexnpud renews a holder that wants at its deadline
    client.release(100, want=False)
    assert slot.get("want") == 0  # finished: no renewal (and charge) of an idle tenant


def test_usage_goes_into_the_slot_and_a_finished_holder_yields_when_someone_waits(
    card: shm.CardRegion, slot: shm.Slot, client: ShmGrantClient, shim: Path
) -> None:
    card.publish(SLOT, 7, FOREVER_NS)
    client.acquire()
    client.report(300)
    client.release(200, want=False)
    assert slot.get("used_ns") == 500_000
    assert slot.get("yield_epoch") == 0  # nobody waits (contended 0): the grant is kept to its deadline

    with shm.CardRegion(str(shim / shm.card_name(0)), writable=True) as daemon_view:
        os.chmod(daemon_view.path, 0o644)
        daemon_view.set("contended", 1)
    client.acquire()
    bell = slot.get("doorbell")
    client.release(0, want=False)
    assert slot.get("yield_epoch") == 7 and slot.get("yield_ns") > 0
    assert slot.get("doorbell") == bell + 1  # flexnpud hears the yield at once
    assert client.revoked() is False  # no lease any more
    thread, _ = in_thread(client.acquire)
    thread.join(0.2)
    assert thread.is_alive()  # the epoch given back is not ours any more: waiting for a new grant
    card.publish(SLOT, 8, FOREVER_NS)
    thread.join(10)
    assert not thread.is_alive()


def test_without_a_card_region_it_paces_locally_at_its_share(shim: Path, slot: shm.Slot, tmp_path: Path) -> None:
    client = ShmGrantClient(str(shim), "tenant", str(tmp_path / "nobody.sock"), 0.5)
    try:
        lease = client.acquire()
        assert lease.local
        assert not client.connected
    finally:
        client.close()


def test_a_silent_daemon_means_local_pacing_after_two_seconds(
    card: shm.CardRegion, slot: shm.Slot, client: ShmGrantClient
) -> None:
    now = [10**12]

    def clock() -> int:
        now[0] += 500_000_000  # half a second per look: the futex waits are short, the clock is not
        return now[0]

    client._clock_ns = clock
    lease = client.acquire()
    assert lease.local and not client.connected
    assert client.acquire().local  # still silent: no second wait of 2 s
    card.publish(SLOT, 9, FOREVER_NS)
    client.release(0)
    client._clock_ns = lambda: 10**12
    assert not client.acquire().local  # the daemon is back: granted again


def test_a_slicer_on_the_shm_client_reports_completed_work_as_it_goes(
    card: shm.CardRegion, slot: shm.Slot, client: ShmGrantClient
) -> None:
    class Device:
        def drain(self) -> None:
            pass

        def mark(self) -> None:
            pass

        def settle(self) -> None:
            pass

    card.publish(SLOT, 11, FOREVER_NS)
    slicer = Slicer(client, Device(), METER_DECLARED)
    for _ in range(10):
        slicer.launch(400)
    assert slot.get("used_ns") > 0  # before the end of the lease: flexnpud reads it at its deadlines
    slicer.finish()
    assert slot.get("used_ns") == 4000 * 1000


def test_make_grants_takes_the_slot_when_there_is_one(shim: Path, slot: shm.Slot, tmp_path: Path) -> None:
    sock = str(tmp_path / "grant.sock")
    grants = make_grants(str(shim), "tenant", sock, 0.5)
    assert isinstance(grants, ShmGrantClient)
    grants.close()
    assert isinstance(make_grants(str(shim), "other", sock, 0.5), GrantClient)  # no slot: the socket
    via_id = make_grants(str(shim), "claim-x", sock, 0.5, slot_id="tenant")
    assert isinstance(via_id, ShmGrantClient) and via_id.flexnpu_id == "claim-x"
    via_id.close()


def test_the_environment_names_the_shim_dir_and_the_slot(tmp_path: Path) -> None:
    env = runtime_env(tmp_path, "claim", str(tmp_path / "run" / "grant.sock"), "step")
    config = RuntimeConfig.from_env(env)
    assert config is not None and config.slot_dir == str(tmp_path / "run")  # default: the socket's directory
    config = RuntimeConfig.from_env({**env, "FLEXNPU_SHIM_DIR": "/elsewhere", "FLEXNPU_ID": "slot-id"})
    assert config is not None and (config.slot_dir, config.slot_id) == ("/elsewhere", "slot-id")


def test_flexnpud_refusing_the_hello_is_an_error(
    make_grant_server: Callable[..., GrantServer], grant_socket: str, shim: Path, slot: shm.Slot, card: shm.CardRegion
) -> None:
    make_grant_server([registration("someone-else")])
    client = ShmGrantClient(str(shim), "tenant", grant_socket, 0.5)
    try:
        with pytest.raises(GrantRefusedError):
            client.acquire()
    finally:
        client.close()
