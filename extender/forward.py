"""Binds that reach a standby replica, forwarded to the leader (issue 10, case 11).

Every synced replica answers filter, prioritize and preempt from its own watch cache, so every synced replica is
an endpoint of the chart's one Service; but only the leader binds (its reservations are in memory). A standby that
receives a bind therefore POSTs the same (validated) binding arguments to the leader's URL, which the leader
publishes in an annotation on the election Lease (:mod:`flexnpu.extender.leader`), and answers what the leader
answered. It waits at most ``timeout_s``, kept below kube-scheduler's extender ``httpTimeout`` (5 s in the
chart), so that the scheduler reads our error rather than its own timeout.

A forwarded request carries :data:`FORWARDED_HEADER`; a replica that receives one and is not the leader answers
an error instead of forwarding again, so a stale URL can never make binds go round in a loop.

:func:`peer_url` (a URL from the Lease or from a setting: ``http(s)://host:port`` and nothing more) and
:func:`leader_reply` (the leader's answer) are pure; :class:`BindForwarder` is the HTTP client.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from types import TracebackType
from typing import Final, Protocol
from urllib.parse import urlsplit

import aiohttp

from flexnpu.errors import ValidationError
from flexnpu.extender import wire

log = logging.getLogger(__name__)

FORWARDED_HEADER: Final = "X-Flexnpu-Forwarded-By"
"""Set on a bind one replica forwards to another; its value names the forwarding replica."""

MAX_REPLY_BYTES: Final = 64 * 1024  # an ExtenderBindingResult is {"Error": "<one message>"}
_MAX_URL: Final = 512
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


class LeaderLocation(Protocol):
    """Who leads and where it can be reached (the leader elector; a fixed value in tests)."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader(self) -> str: ...

    @property
    def leader_url(self) -> str: ...


def peer_url(value: object, field: str = "url") -> str:
    """``http(s)://host:port`` (a trailing ``/`` allowed) -> that URL without the slash.

    Anything else (another scheme, no port, a path, a query, credentials, a host that is neither a DNS name nor
    an IP address) raises ValidationError naming ``field``.
    """
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_URL or not value.isprintable() or " " in value:
        raise ValidationError(field, value, f"must be a text of 1..{_MAX_URL} characters: http(s)://host:port")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(field, value, f"is not a URL ({exc})") from exc
    if parts.scheme not in ("http", "https") or not port or not parts.hostname:
        raise ValidationError(field, value, "must be http(s)://host:port with an explicit port")
    if parts.username is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValidationError(field, value, "must be http(s)://host:port only (no credentials, path or query)")
    if not _valid_host(parts.hostname, bracketed=parts.netloc.startswith("[")):
        raise ValidationError(field, value, "names neither a DNS name nor an IP address")
    return f"{parts.scheme}://{parts.netloc}"


def _valid_host(host: str, *, bracketed: bool) -> bool:
    if bracketed:
        try:
            return ipaddress.ip_address(host).version == 6
        except ValueError:
            return False
    return bool(_HOSTNAME.match(host))


def url_for(host: str, port: int, scheme: str = "http") -> str:
    """The URL of ``host`` (a DNS name or an IP address, IPv6 bracketed) and ``port``."""
    try:
        bracket = ipaddress.ip_address(host).version == 6
    except ValueError:
        bracket = False
    return f"{scheme}://[{host}]:{port}" if bracket else f"{scheme}://{host}:{port}"


def leader_reply(leader: str, status: int, raw: bytes) -> wire.ExtenderBindingResult:
    """The leader's answer to a forwarded bind, as this replica answers it (an error names the leader)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        body = None
    error = body.get("Error") if isinstance(body, dict) else None
    if status == 200 and isinstance(error, str):
        return {"Error": f"leader {leader}: {error}" if error else ""}
    if isinstance(error, str) and error:
        return {"Error": f"leader {leader} answered HTTP {status}: {error}"}
    return {"Error": f"leader {leader} answered HTTP {status} without an ExtenderBindingResult"}


def forwarded_by(value: str) -> str:
    """The forwarding replica named in :data:`FORWARDED_HEADER`, made safe to quote (hostile input)."""
    return repr(value[:128])


class BindForwarder:
    """Sends a bind to the leader, for a standby. It owns an HTTP session, opened at the first bind: close it (or
    use the forwarder as an async context manager)."""

    def __init__(self, location: LeaderLocation, *, identity: str, timeout_s: float, path: str = "/bind") -> None:
        self.location = location
        self.identity = identity
        self.timeout_s = timeout_s
        self.path = path
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BindForwarder:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    def unreachable(self) -> str:
        """Why a bind cannot be forwarded now ("" when the leader and its URL are known)."""
        where = self.location
        if not where.leader:
            return "no leader is known yet (election in progress)"
        if not where.leader_url:
            return f"the leader, {where.leader}, publishes no URL in the Lease (its advertise_url is unset)"
        return ""

    async def forward(self, args: wire.ExtenderBindingArgs) -> wire.ExtenderBindingResult:
        """The leader's answer to ``args``, or an error naming the leader and why it could not be asked."""
        leader, url = self.location.leader, self.location.leader_url
        why = self.unreachable()
        if why:
            return {"Error": self._refusal(why)}
        try:
            async with self._client().post(
                url + self.path,
                data=json.dumps(args),
                headers={"Content-Type": "application/json", FORWARDED_HEADER: self.identity},
                allow_redirects=False,
            ) as response:
                raw = await _read_bounded(response)
                return leader_reply(leader, response.status, raw)
        except TimeoutError:
            return {"Error": self._refusal(f"the leader, {leader} at {url}, did not answer within {self.timeout_s} s")}
        except ReplyTooLarge as exc:
            return {"Error": self._refusal(f"the leader, {leader} at {url}, answered too much: {exc}")}
        except (aiohttp.ClientError, ValueError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            return {"Error": self._refusal(f"the leader, {leader} at {url}, is unreachable ({detail})")}

    def _refusal(self, why: str) -> str:
        return f"extender replica {self.identity} is a standby and could not forward this bind: {why}"


class ReplyTooLarge(ValueError):
    """The leader's answer exceeds :data:`MAX_REPLY_BYTES`."""


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise ReplyTooLarge(f"its answer exceeds {MAX_REPLY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
