"""``flexnpu bench grant``'s machine floor: an echo between two processes, no flexnpu code."""

from __future__ import annotations

from flexnpu.bench.grant import socket_floor


def test_the_machine_floor_times_every_round_trip_to_an_echo_process() -> None:
    floor = socket_floor(200)
    assert floor["n"] == 200
    assert 0 < floor["p50_us"] <= floor["p99_us"] <= floor["max_us"]
