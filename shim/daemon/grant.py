"""Hosting the grant server: the one collaborator of flexnpud that serves the in-pod runtime on a unix socket.

The daemon only needs four methods of it (``GrantHost``); tests of the HTTP layer pass a small fake, and
``build_grant_server`` constructs the real ``flexnpu.shim.grant.server.GrantServer`` with the slice policy the
config describes, and with the shared-memory grant path (card regions and registration slots) in the socket
directory beside the socket.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from flexnpu.cards import Card
from flexnpu.registration import Registration
from flexnpu.shim.core.slicing import Mode, SlicePolicy
from flexnpu.shim.daemon.config import DaemonSettings
from flexnpu.shim.grant.server import GrantServer

# Keys of one registration's live figures in ``stats()``.
STAT_KEYS = ("device_time_us", "grants", "wait_p99_us", "achieved_share")


class GrantHost(Protocol):
    """What flexnpud calls on the grant server."""

    def start(self) -> None:
        """Return once the socket listens; serve in the background."""

    def set_registrations(self, registrations: Sequence[Registration]) -> None:
        """The full current set, after every change."""

    def stats(self) -> Mapping[str, Mapping[str, float]]:
        """Live figures by flexnpu_id (``STAT_KEYS``)."""
        ...

    def stop(self) -> None:
        """Stop serving and remove the socket."""


def build_grant_server(settings: DaemonSettings, cards: Sequence[Card]) -> GrantHost:
    """The real grant server on ``settings.socket_path``, scheduling with the configured policy."""
    mode: Mode = "ops" if settings.policy == "ops" else "share"
    policy = SlicePolicy(
        quota=settings.quota,
        share_in_idle=settings.share_in_idle,
        slice_us=settings.schedule_cycle,
        mode=mode,
        ticker_interval_us=settings.ticker_interval,
        oversubscription=settings.oversubscription,
    )
    return GrantServer(
        str(settings.socket_path), policy, cards, shm_dir=settings.socket_dir, daemon_pid_start=daemon_pid_start()
    )


def daemon_pid_start() -> int:
    """The card regions' ``daemon_pid_start``: pid << 32 | a start counter (the wall clock's seconds), so that a
    tenant sees a restarted daemon even when it got the same pid."""
    return (os.getpid() & 0xFFFFFFFF) << 32 | (int(time.time()) & 0xFFFFFFFF)
