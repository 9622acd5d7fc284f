"""The node-side adapter for this node's daemon flexnpud (DESIGN.md section 6): its HTTP API and bearer token.

Used by the two kubelet plugins on the node, both beside flexnpud in the node pod: the DRA plugin registers a
claim in NodePrepareResources, the device plugin registers a pod's VNpuClaims in Allocate when flexnpud does not
hold them yet (the operator, which registers every claim too, then finds them registered). The operator keeps its
own asynchronous client (aiohttp, one session for every node).

``POST /device/register`` with a ``Registration`` body, ``POST /device/unregister`` with ``{"flexnpu_id"}``.
A transport failure or a 5xx raises DaemonUnreachable, a 4xx DaemonRefused with the daemon's reason; unregistering
an id the daemon does not hold (404) counts as done.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flexnpu.errors import ConfigError, FlexnpuError
from flexnpu.registration import Registration


class DaemonError(FlexnpuError):
    pass


class DaemonUnreachable(DaemonError):
    """No answer or a server-side error: kubelet's retry may succeed."""


class DaemonRefused(DaemonError):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"flexnpud refused ({status}): {message}")


class DaemonClient:
    def __init__(self, base_url: str, *, token: Callable[[], str], timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout

    def register(self, registration: Registration) -> None:
        self._post("/device/register", dict(registration.to_body()))

    def unregister(self, flexnpu_id: str) -> bool:
        """False when the daemon did not hold ``flexnpu_id``."""
        try:
            self._post("/device/unregister", {"flexnpu_id": flexnpu_id})
        except DaemonRefused as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _post(self, path: str, body: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            reason = _reason(text)
            if exc.code >= 500:
                raise DaemonUnreachable(f"POST {path} answered {exc.code}: {reason}") from exc
            raise DaemonRefused(exc.code, reason) from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise DaemonUnreachable(f"POST {self.base_url}{path} failed: {exc}") from exc


def read_token(inline: str, path: Path | None, field: str = "daemon_token_file") -> str:
    """The bearer token: the file's content (a mounted Secret, read at each call so that a rotation is seen), else
    ``inline``. ConfigError names ``field`` when the file cannot be read."""
    if path is None:
        return inline
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(field, str(path), exc.strerror or "unreadable") from exc


def _reason(text: str) -> str:
    try:
        reply = json.loads(text)
    except ValueError:
        return text.strip()[:300] or "no reason given"
    if isinstance(reply, dict):
        return str(reply.get("error") or reply.get("message") or text)[:300]
    return text[:300]
