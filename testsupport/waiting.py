"""Test support's ``free_port`` and ``wait_for``: the project's one implementation, in ``flexnpu.waiting``."""

from flexnpu.waiting import DEFAULT_INTERVAL_S, DEFAULT_TIMEOUT_S, WaitTimeout, free_port, wait_for

__all__ = ["DEFAULT_INTERVAL_S", "DEFAULT_TIMEOUT_S", "WaitTimeout", "free_port", "wait_for"]
