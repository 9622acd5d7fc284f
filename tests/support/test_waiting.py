"""The one ``wait_for`` and ``free_port`` of the test support."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from flexnpu.waiting import FIRST_PORT, PORT_RANGE_FILE
from flexnpu_testsupport.waiting import WaitTimeout, free_port, wait_for


def test_wait_for_returns_the_first_truthy_value() -> None:
    values: Iterator[object] = iter([None, 0, "", (7,)])
    assert wait_for("a tuple", lambda: next(values), timeout=60, interval=0) == (7,)


def test_wait_for_probes_at_least_once_and_names_what_it_waited_for() -> None:
    calls = []
    with pytest.raises(WaitTimeout, match=r"timed out after 0 s waiting for the moon"):
        wait_for("the moon", lambda: calls.append(1), timeout=0)
    assert calls == [1]


def test_wait_for_lets_a_probe_give_up_early() -> None:
    def probe() -> bool:
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="exited"):
        wait_for("a process", probe, timeout=60)


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        assert s.getsockname()[1] == port


def test_free_port_lies_below_the_ephemeral_range_outgoing_connections_take(tmp_path: Path) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("40000\t60999\n", encoding="ascii")
    ports = {free_port(port_range=str(ranges)) for _ in range(20)}
    assert all(FIRST_PORT <= p < 40000 for p in ports), ports
    assert len(ports) > 1  # drawn, not one fixed port


def test_free_port_without_a_readable_range_is_the_kernels_choice(tmp_path: Path) -> None:
    port = free_port(port_range=str(tmp_path / "missing"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        assert s.getsockname()[1] == port
    if Path(PORT_RANGE_FILE).is_file():
        low, high = map(int, Path(PORT_RANGE_FILE).read_text(encoding="ascii").split())
        assert low <= port <= high  # what binding port 0 gives
