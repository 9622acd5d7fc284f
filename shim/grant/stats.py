"""Live figures of one registration as the grant server sees them (for flexnpud's flexnpu-info and metrics)."""

from __future__ import annotations

from collections import deque

# Achieved share is measured over this trailing window of reported device time.
SHARE_WINDOW_US = 2_000_000
# Grant waits kept for the p99.
WAIT_SAMPLES = 4096


class TenantStats:
    """Device time reported by the runtime, grants handed out, and how long grants were waited for."""

    def __init__(self, now_us: int) -> None:
        self.since_us = now_us
        self.device_time_us = 0
        self.grants = 0
        self._waits: deque[int] = deque(maxlen=WAIT_SAMPLES)
        self._usage: deque[tuple[int, int]] = deque()

    def used(self, used_us: int, now_us: int) -> None:
        self.device_time_us += used_us
        self._usage.append((now_us, used_us))
        self._trim(now_us)

    def waited(self, wait_us: int) -> None:
        self._waits.append(max(0, wait_us))

    def figures(self, now_us: int) -> dict[str, float]:
        self._trim(now_us)
        window = min(SHARE_WINDOW_US, max(1, now_us - self.since_us))
        share = sum(used for _, used in self._usage) / window
        return {
            "device_time_us": float(self.device_time_us),
            "grants": float(self.grants),
            "wait_p99_us": float(_p99(self._waits)),
            "achieved_share": min(1.0, share),
        }

    def _trim(self, now_us: int) -> None:
        while self._usage and self._usage[0][0] < now_us - SHARE_WINDOW_US:
            self._usage.popleft()


def _p99(values: deque[int]) -> int:
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
