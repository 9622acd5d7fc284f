"""A hostile pod on the grant socket: no bytes it sends, no way it dies, no number of connections wedges a card.

The server runs on a manual clock with its timer thread off: time moves, and grants expire, only when a test
moves the clock and calls ``run_timers``, so nothing here depends on how fast the loaded machine is. Waits on
sockets are bounded (a failure is a timeout, never a hang).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rt_helpers import CARD, ManualClock, registration, wait_for

from flexnpu.shim.core.slicing import SlicePolicy
from flexnpu.shim.grant.server import EXPIRY_GRACE_US, LIMITS, GrantServer
from flexnpu.shim.grant.unixserver import Limits
from flexnpu.shim.runtime import wire
from flexnpu.shim.runtime.grant_client import GrantClient
from flexnpu.shim.runtime.wire import LineSocket, Message, WireError

ChildFactory = Callable[..., subprocess.Popen[str]]
MakeServer = Callable[..., GrantServer]

WAIT_S = 20.0
SLICE_US = 2000
GRACE_US = SlicePolicy().charge_grace_us
# Moving the clock this far ends any grant: its budget, then the expiry grace.
PAST_ANY_DEADLINE_US = SLICE_US + EXPIRY_GRACE_US + 1
REGISTRATIONS = [registration("a", units=4), registration("b", units=4), registration("evil", units=2)]


class Runtime:
    """An honest runtime speaking the wire protocol with bounded waits (``GrantClient`` blocks without a bound)."""

    def __init__(self, socket_path: str, flexnpu_id: str) -> None:
        self.conn = wire.connect_unix(socket_path, timeout=WAIT_S)
        self.seq: int | None = None
        self.grants = 0
        self.conn.send({"op": wire.OP_HELLO, "id": flexnpu_id})
        welcome = self.conn.receive(timeout=WAIT_S)
        assert welcome["op"] == wire.OP_WELCOME, welcome

    def sync(self) -> None:
        """Everything sent so far was handled: ping, and read (noting grants) until the pong."""
        self.conn.send({"op": wire.OP_PING})
        while (message := self.conn.receive(timeout=WAIT_S))["op"] != wire.OP_PONG:
            assert message["op"] != wire.OP_ERROR, message
            if message["op"] == wire.OP_GRANT:
                self.seq = message["seq"]
                self.grants += 1

    def want(self) -> None:
        self.conn.send({"op": wire.OP_WANT})
        self.sync()

    def release(self, used_us: int) -> None:
        assert self.seq is not None
        self.conn.send({"op": wire.OP_RELEASE, "seq": self.seq, "used_us": used_us})
        self.seq = None
        self.sync()

    def close(self) -> None:
        self.conn.close()


def raw_connect(socket_path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT_S)
    sock.connect(socket_path)
    return sock


def replies(sock: socket.socket) -> list[Message]:
    """Every message the server sends until it closes the connection (bounded by the socket's timeout)."""
    conn = LineSocket(sock)
    out: list[Message] = []
    try:
        while True:
            out.append(conn.receive(timeout=WAIT_S))
    except WireError:
        return out


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def server(make_grant_server: MakeServer, clock: ManualClock) -> GrantServer:
    return make_grant_server(REGISTRATIONS, clock_us=clock, timer=False)


def holding_hostile(socket_path: str, flexnpu_id: str = "evil") -> LineSocket:
    """A connection of ``flexnpu_id`` that holds the card (grant seq 1) while honest "a" waits."""
    hostile = wire.connect_unix(socket_path, timeout=WAIT_S)
    hostile.send({"op": wire.OP_HELLO, "id": flexnpu_id})
    assert hostile.receive(timeout=WAIT_S)["op"] == wire.OP_WELCOME
    hostile.send({"op": wire.OP_WANT})
    grant = hostile.receive(timeout=WAIT_S)
    assert grant["op"] == wire.OP_GRANT and grant["seq"] == 1, grant
    return hostile


# ----- bad numbers and bad bytes -------------------------------------------------------------------------------

HELD_US = 3000


@pytest.mark.parametrize(
    ("used_us", "charged"),
    [
        (b"1e400", HELD_US),  # json reads inf; int(inf) raised after the holder was marked released: the card wedged
        (b"NaN", HELD_US),
        (b"-Infinity", HELD_US),
        (b"Infinity", HELD_US),
        (b"-5", HELD_US),
        (b"1" + b"0" * 400, HELD_US + GRACE_US),  # a huge integer: more than it could have used, clamped
        (b"1e18", HELD_US + GRACE_US),
        (b'"2500"', HELD_US),
        (b"[1]", HELD_US),
        (b"{}", HELD_US),
        (b"true", HELD_US),
        (b"null", HELD_US),
        (b"0", HELD_US),  # under-reporting gains nothing
        (b"2500", HELD_US),
        (b"3500", 3500),  # a little more than held: believed, within the grace
        (None, HELD_US),  # missing
    ],
)
def test_a_release_with_any_usage_value_hands_the_card_on(
    server: GrantServer, grant_socket: str, clock: ManualClock, used_us: bytes | None, charged: int
) -> None:
    hostile = holding_hostile(grant_socket)
    honest = Runtime(grant_socket, "a")
    try:
        honest.want()
        assert honest.seq is None  # the hostile holds the card
        clock.now_us += HELD_US
        field = b"" if used_us is None else b',"used_us":' + used_us
        hostile.sock.sendall(b'{"op":"release","seq":1' + field + b"}\n")
        hostile.send({"op": wire.OP_PING})
        assert hostile.receive(timeout=WAIT_S)["op"] == wire.OP_PONG
        honest.sync()
        assert honest.seq is not None, "the release did not hand the card on"
        assert server.stats()["evil"]["device_time_us"] == charged
        assert server.serving
    finally:
        hostile.close()
        honest.close()


@pytest.mark.parametrize(
    "line",
    [
        b"\xff\xfe\x00garbage\n",
        b"{not json\n",
        b"[" * 4000 + b"\n",  # deeper than the JSON parser's recursion limit
        b"x" * 10_000,  # longer than a line may be, no newline
        b'{"op":"hello","id":"again"}\n',
        b'{"op":"nope"}\n',
        b'{"op":["want"]}\n',
        b"[1, 2]\n",
    ],
)
def test_garbage_from_a_holder_closes_only_its_connection_and_returns_the_card(
    server: GrantServer, grant_socket: str, clock: ManualClock, line: bytes
) -> None:
    hostile = holding_hostile(grant_socket)
    honest = Runtime(grant_socket, "a")
    try:
        honest.want()
        clock.now_us += HELD_US
        hostile.sock.sendall(line)
        rest = replies(hostile.sock)
        assert all(m["op"] in (wire.OP_ERROR, wire.OP_REVOKE) for m in rest), rest
        honest.sync()
        assert honest.seq is not None
        assert server.stats()["evil"]["device_time_us"] == HELD_US  # charged the time it held the card
    finally:
        hostile.close()
        honest.close()


@pytest.mark.parametrize(
    "hello",
    [
        b'{"op":"hello","id":"\\ud800"}\n',  # a lone surrogate: valid JSON, not text
        b'{"op":"hello","id":["a"]}\n',
        b'{"op":"hello","id":"' + b"a" * 600 + b'"}\n',
        b'{"op":"want"}\n',
    ],
)
def test_a_bad_hello_is_refused_with_a_protocol_error(server: GrantServer, grant_socket: str, hello: bytes) -> None:
    sock = raw_connect(grant_socket)
    try:
        sock.sendall(hello)
        assert [m["code"] for m in replies(sock)] == [wire.ERR_PROTOCOL]
    finally:
        sock.close()
    assert server.serving


# ----- holders that die or go silent --------------------------------------------------------------------------

HOLD_AND_WAIT = """
import sys, time
from flexnpu.shim.runtime.grant_client import GrantClient
client = GrantClient({socket!r}, "evil", 0.2)
lease = client.acquire()
print("holding", lease.seq, flush=True)
sys.stdin.readline()  # never returns: the test kills us while we hold the card
"""


def test_a_holder_killed_while_holding_gives_the_card_back_at_once(
    server: GrantServer, grant_socket: str, clock: ManualClock, child: ChildFactory
) -> None:
    proc = child(HOLD_AND_WAIT.format(socket=grant_socket))
    assert proc.stdout is not None
    assert proc.stdout.readline().split()[0] == "holding"
    honest = Runtime(grant_socket, "a")
    try:
        honest.want()
        assert honest.seq is None
        clock.now_us += 1500  # well inside its slice: no timer could reclaim it (and the timer is off)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT_S)
        wait_for(lambda: server.holders()[(CARD.index, CARD.chip)] == {"a"}, "the grant to move to a")
        honest.sync()
        assert honest.seq is not None
        assert server.stats()["evil"]["device_time_us"] == 1500
    finally:
        honest.close()


def test_a_silent_holder_is_reclaimed_at_its_deadline_not_before(
    server: GrantServer, grant_socket: str, clock: ManualClock
) -> None:
    hostile = holding_hostile(grant_socket)
    honest = Runtime(grant_socket, "a")
    try:
        honest.want()
        clock.now_us += SLICE_US + EXPIRY_GRACE_US - 1
        server.run_timers()
        honest.sync()
        assert honest.seq is None
        clock.now_us += 1
        server.run_timers()
        honest.sync()
        assert honest.seq is not None
        assert hostile.receive(timeout=WAIT_S) == {"op": wire.OP_REVOKE, "seq": 1, "expired": True}
        assert server.stats()["evil"]["device_time_us"] == SLICE_US + EXPIRY_GRACE_US
    finally:
        hostile.close()
        honest.close()


# ----- connections ---------------------------------------------------------------------------------------------


def test_a_connection_that_never_says_hello_is_closed(make_grant_server: MakeServer, grant_socket: str) -> None:
    server = make_grant_server(REGISTRATIONS, hello_timeout_s=0.05)
    sock = raw_connect(grant_socket)
    try:
        sock.sendall(b'{"op":')  # a start, and then nothing
        assert [m["code"] for m in replies(sock)] == [wire.ERR_PROTOCOL]
    finally:
        sock.close()
    wait_for(lambda: server.connections == 0, "the connection to be closed")


ONE_GRANT = """
from flexnpu.shim.runtime.grant_client import GrantClient
client = GrantClient({socket!r}, "b", 0.4)
lease = client.acquire()
client.release(100)
client.ping()
client.close()
print("granted", lease.local, flush=True)
"""


def test_one_peer_cannot_take_every_connection(
    make_grant_server: MakeServer, grant_socket: str, child: ChildFactory
) -> None:
    server = make_grant_server(REGISTRATIONS, limits=Limits(max_connections=8, max_per_peer=3), hello_timeout_s=600)
    mine = [raw_connect(grant_socket) for _ in range(3)]
    extra = raw_connect(grant_socket)
    try:
        assert [m["code"] for m in replies(extra)] == [wire.ERR_BUSY]
        proc = child(ONE_GRANT.format(socket=grant_socket))  # another process: its own allowance
        out, err = proc.communicate(timeout=60)
        assert out.strip() == "granted False", err
    finally:
        for sock in [*mine, extra]:
            sock.close()
    wait_for(lambda: server.connections == 0, "the connections to be closed")


def test_the_total_connection_cap_holds_and_frees_up(make_grant_server: MakeServer, grant_socket: str) -> None:
    server = make_grant_server(REGISTRATIONS, limits=Limits(max_connections=3, max_per_peer=10), hello_timeout_s=600)
    socks = [raw_connect(grant_socket) for _ in range(3)]
    try:
        wait_for(lambda: server.connections == 3, "three connections")
        refused = raw_connect(grant_socket)
        assert [m["code"] for m in replies(refused)] == [wire.ERR_BUSY]
        refused.close()
        turned_away = GrantClient(grant_socket, "a", 0.4)
        assert turned_away.acquire().local  # a full daemon is no verdict on the pod: it paces locally, retries
        turned_away.close()
        socks.pop().close()
        wait_for(lambda: server.connections == 2, "a connection to be closed")
        honest = Runtime(grant_socket, "a")
        honest.want()
        assert honest.seq is not None
        honest.close()
    finally:
        for sock in socks:
            sock.close()


# ----- fuzzing: arbitrary bytes from a hostile client while two honest ones keep being served -------------------

HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(0, 6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
OPS = st.sampled_from(["hello", "want", "release", "extend", "ping", "grant", "revoke", "nope", ""])
HOSTILE_VALUES = st.one_of(st.integers(0, 3), HOSTILE_VALUES)  # seq-like numbers more often
FIELDS = st.dictionaries(
    st.sampled_from(["seq", "used_us", "want", "ops_used", "id", "op"]), HOSTILE_VALUES, max_size=4
)


def _line(op: str, fields: dict[str, object]) -> bytes:
    return (json.dumps({"op": op, **fields}, allow_nan=True) + "\n").encode()


# The hostile's own grants are numbered from 1 on a fresh server: small numbers hit its holding.
SEQS = st.sampled_from([1, 1, 1, 2, 3, 0])
USAGE_TOKENS = st.one_of(
    st.sampled_from(
        [
            b"1e400",
            b"-1e400",
            b"NaN",
            b"Infinity",
            b"-Infinity",
            b"1" + b"0" * 40,
            b"-5",
            b"0",
            b"2500",
            b"1e18",
            b'"7"',
            b"[]",
            b"{}",
            b"null",
            b"true",
        ]
    ),
    st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
)
SHAPED = st.builds(
    lambda op, seq, used, want: b'{"op":"%s","seq":%d,"used_us":%s,"want":%s}\n' % (op, seq, used, want),
    st.sampled_from([b"release", b"release", b"extend", b"want", b"ping"]),
    SEQS,
    USAGE_TOKENS,
    st.sampled_from([b"true", b"false", b"1"]),
)
HOSTILE_CHUNKS = st.one_of(
    SHAPED,
    SHAPED,
    SHAPED,
    SHAPED,  # the right shape with hostile values reaches the deepest paths: drawn most
    st.builds(_line, OPS, FIELDS),
    st.binary(max_size=64),
    st.sampled_from([b"\n", b"[" * 3000 + b"\n", b"x" * 5000 + b"\n", b'{"op":"want"}\n']),
)
HOSTILE_HELLOS = st.sampled_from(
    [b'{"op":"hello","id":"evil"}\n', b'{"op":"hello","id":"evil"}\n', b'{"op":"hello","id":"a"}\n', b""]
)


def _serve_honest(server: GrantServer, clock: ManualClock, honest: list[Runtime]) -> None:
    """Both honest runtimes want the card and each gets a grant within a few deadlines."""
    before = [r.grants for r in honest]
    for runtime in honest:
        runtime.want()
    for _ in range(4):
        for runtime in honest:
            runtime.sync()
            if runtime.seq is not None:
                runtime.release(500)
        if all(r.grants > b for r, b in zip(honest, before, strict=True)):
            return
        clock.now_us += PAST_ANY_DEADLINE_US
        server.run_timers()
    raise AssertionError(f"an honest runtime was not served: grants {[r.grants for r in honest]}")


def _flush(hostile: socket.socket, sent: bytes) -> None:
    """Wait until the server handled everything the hostile sent: its pong, or the end of its connection."""
    ending = b"" if not sent or sent.endswith(b"\n") else b"\n"  # ends a partial line (which may close it)
    try:
        hostile.sendall(ending + wire.encode({"op": wire.OP_PING}))
    except OSError:
        return
    conn = LineSocket(hostile)
    try:
        while conn.receive(timeout=WAIT_S).get("op") != wire.OP_PONG:
            pass
    except WireError:
        return


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    hello=HOSTILE_HELLOS,
    first=st.lists(HOSTILE_CHUNKS, min_size=1, max_size=8),
    second=st.lists(HOSTILE_CHUNKS, max_size=8),
)
def test_no_hostile_byte_sequence_stops_the_honest_tenants(
    tmp_path: Path, hello: bytes, first: list[bytes], second: list[bytes]
) -> None:
    clock = ManualClock()
    with fuzz_server(tmp_path, clock) as server:
        hostile = raw_connect(server.socket_path)
        honest = [Runtime(server.socket_path, "a"), Runtime(server.socket_path, "b")]
        try:
            _send(hostile, hello + b'{"op":"want"}\n' + b"".join(first))  # it holds the card (seq 1) if it can
            _serve_honest(server, clock, honest)
            _send(hostile, b"".join(second))
            _serve_honest(server, clock, honest)
        finally:
            hostile.close()
        wait_for(lambda: server.connections == 2, "the hostile connection to be dropped")
        _serve_honest(server, clock, honest)
        assert server.serving
        assert server.holders()[(CARD.index, CARD.chip)] == frozenset()  # nobody left holding the card
        for runtime in honest:
            runtime.close()


def _send(hostile: socket.socket, data: bytes) -> None:
    try:
        hostile.sendall(data)
    except OSError:
        return  # the server closed it already (garbage, a bad hello): that is allowed
    _flush(hostile, data)


_fuzz_sockets = itertools.count()


@contextlib.contextmanager
def fuzz_server(tmp_path: Path, clock: ManualClock) -> Iterator[GrantServer]:
    """A fresh server per example (hypothesis runs the test body many times under one tmp_path)."""
    server = GrantServer(
        str(tmp_path / f"fuzz-{next(_fuzz_sockets)}.sock"),
        SlicePolicy(quota=10, slice_us=SLICE_US),
        [CARD],
        proc_root=tmp_path / "proc",
        clock_us=clock,
        timer=False,
    )
    server.start()
    try:
        server.set_registrations(REGISTRATIONS)
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_leftover_sockets(tmp_path: Path) -> Iterator[None]:
    yield
    assert not list(tmp_path.glob("fuzz-*.sock")), "a fuzz server left its socket behind"


def test_a_pod_opening_hundreds_of_connections_is_cut_off_at_its_allowance(
    make_grant_server: MakeServer, grant_socket: str, child: ChildFactory
) -> None:
    server = make_grant_server(REGISTRATIONS, hello_timeout_s=600)  # the daemon's own limits
    flood = [raw_connect(grant_socket) for _ in range(LIMITS.max_per_peer + 36)]
    try:
        wait_for(lambda: server.connections + server.refused_connections >= len(flood), "every connection answered")
        assert server.connections == LIMITS.max_per_peer
        assert server.refused_connections == 36
        proc = child(ONE_GRANT.format(socket=grant_socket))  # the other tenants are still served
        out, err = proc.communicate(timeout=60)
        assert out.strip() == "granted False", err
    finally:
        for sock in flood:
            sock.close()
