"""The operator's one adapter for the node daemon's HTTP API (flexnpud, DESIGN.md section 6).

aiohttp errors never leave this module: a transport failure, a timeout or a 5xx becomes DaemonUnreachable
(worth retrying), a 4xx becomes DaemonRefused carrying the daemon's own reason (not worth retrying as is).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

from flexnpu.errors import FlexnpuError, ValidationError
from flexnpu.operator.core.daemons import parse_flexnpu_info
from flexnpu.operator.core.reconcile import backoff_delay, is_transient
from flexnpu.registration import Registration

T = TypeVar("T")


class DaemonError(FlexnpuError):
    """A node daemon did not do what was asked."""

    def __init__(self, url: str, message: str) -> None:
        self.url = url
        self.message = message
        super().__init__(f"{url}: {message}")


class DaemonUnreachable(DaemonError):
    """No answer, a timeout, or a server-side error: the same call may work later."""


class DaemonRefused(DaemonError):
    """The daemon said no to this request (quota, memory, bad field, auth): repeating it will not help."""

    def __init__(self, url: str, status: int, message: str, field: str = "") -> None:
        self.status = status
        self.field = field
        super().__init__(url, message)


class DaemonClient:
    """Calls one daemon URL at a time; the session is shared by all nodes and owned by the caller."""

    def __init__(self, session: aiohttp.ClientSession, *, token: Callable[[], str], timeout: float) -> None:
        self._session = session
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def register(self, base: str, registration: Registration) -> str:
        """What the daemon did: ``created``, ``updated`` or ``unchanged`` (empty when its answer says none)."""
        reply = await self._call("POST", base, "/device/register", dict(registration.to_body()))
        result = reply.get("result") if isinstance(reply, dict) else None
        return result if isinstance(result, str) else ""

    async def unregister(self, base: str, flexnpu_id: str) -> bool:
        """False when the daemon did not hold the id (already gone counts as done)."""
        try:
            await self._call("POST", base, "/device/unregister", {"flexnpu_id": flexnpu_id})
        except DaemonRefused as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def registrations(self, base: str) -> dict[str, Registration]:
        reply = await self._call("GET", base, "/device/flexnpu-info", None)
        try:
            return parse_flexnpu_info(reply)
        except ValidationError as exc:
            raise DaemonUnreachable(base, f"unreadable flexnpu-info: {exc}") from exc

    async def health(self, base: str) -> object:
        return await self._call("GET", base, "/service/health", None)

    async def _call(self, method: str, base: str, path: str, body: dict[str, Any] | None) -> object:
        url = base + path
        token = self._token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with self._session.request(
                method, url, json=body, headers=headers, timeout=self._timeout
            ) as response:
                text = await response.text()
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise DaemonUnreachable(base, f"{method} {path} failed: {type(exc).__name__}: {exc}") from exc
        return _decode(base, method, path, status, text)


def _decode(base: str, method: str, path: str, status: int, text: str) -> object:
    try:
        reply: object = json.loads(text) if text else None
    except ValueError:
        reply = text
    if 200 <= status < 300:
        return reply
    error, field = _error_of(reply, text)
    if is_transient(status):
        raise DaemonUnreachable(base, f"{method} {path} answered {status}: {error}")
    raise DaemonRefused(base, status, error, field)


def _error_of(reply: object, text: str) -> tuple[str, str]:
    if isinstance(reply, dict):
        return str(reply.get("error") or reply.get("message") or text), str(reply.get("field") or "")
    return text.strip() or "no reason given", ""


async def with_retries(call: Callable[[], Awaitable[T]], *, attempts: int, base: float, cap: float) -> T:
    """Run ``call``; on DaemonUnreachable wait with exponential backoff and try again, ``attempts`` in all."""
    for attempt in range(attempts - 1):
        try:
            return await call()
        except DaemonUnreachable:
            await asyncio.sleep(backoff_delay(attempt, base=base, cap=cap))
    return await call()
