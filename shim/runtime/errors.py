"""Errors the in-pod runtime raises into application code (standard library only)."""

from __future__ import annotations


class MemoryCapExceeded(MemoryError):
    """An allocation would pass this pod's device-memory cap; raised in the allocating process only."""
