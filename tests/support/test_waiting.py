"""The one ``wait_for`` and ``free_port`` of the test support."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

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
