"""Where a node's flexnpud answers, and what it holds: pure readings of pod bodies and daemon replies.

The operator finds a node's daemon as the flexnpu node DaemonSet's pod on that node (chosen by a label
selector); the pod's IP (or its host's, for a host-network daemon) and its container port named
``port_name`` give the URL. A static URL template (``{node}`` is replaced) replaces the lookup where there is
no DaemonSet, e.g. in tests. The daemon's ``GET /device/flexnpu-info`` reply is read tolerantly: a list of
registrations, or an object holding one under ``registrations``, or an object keyed by id.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flexnpu.errors import ValidationError
from flexnpu.registration import Registration, parse_registration


class AddressKind(enum.StrEnum):
    POD_IP = "pod-ip"
    HOST_IP = "host-ip"


@dataclass(frozen=True)
class DaemonEndpoint:
    """One daemon pod as the operator sees it."""

    node: str
    url: str
    pod: str = ""
    ready: bool = True


def parse_selector(text: str) -> dict[str, str]:
    """``a=b,c=d`` (equality terms only, as a DaemonSet's matchLabels are) into a dict."""
    labels: dict[str, str] = {}
    for term in (t.strip() for t in text.split(",")):
        if not term:
            continue
        key, sep, value = term.partition("=")
        if not sep or not key.strip() or "!" in key:
            raise ValidationError("daemon_selector", text, f"term {term!r} is not key=value")
        labels[key.strip()] = value.strip().lstrip("=")
    return labels


def selector_matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def url_from_template(template: str, node: str) -> str:
    return template.replace("{node}", node).rstrip("/")


def endpoint_from_pod(
    pod: Mapping[str, Any], *, port_name: str, default_port: int, address: AddressKind, scheme: str = "http"
) -> DaemonEndpoint | None:
    """The daemon endpoint a pod body offers; None while it has no node, no address, or is finished."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    meta = pod.get("metadata") or {}
    node = spec.get("nodeName")
    ip = status.get("hostIP") if address == AddressKind.HOST_IP else status.get("podIP")
    if not node or not ip or status.get("phase") in ("Succeeded", "Failed") or meta.get("deletionTimestamp"):
        return None
    port = _named_port(spec.get("containers") or [], port_name) or default_port
    host = f"[{ip}]" if ":" in str(ip) else str(ip)
    return DaemonEndpoint(
        node=str(node), url=f"{scheme}://{host}:{port}", pod=str(meta.get("name", "")), ready=_is_ready(status)
    )


def _named_port(containers: Iterable[Mapping[str, Any]], name: str) -> int | None:
    for container in containers:
        for port in container.get("ports") or []:
            if port.get("name") == name and isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
    return None


def _is_ready(status: Mapping[str, Any]) -> bool:
    conditions = status.get("conditions") or []
    ready = [c.get("status") for c in conditions if c.get("type") == "Ready"]
    return not ready or ready[0] == "True"  # no conditions yet: let the daemon itself answer


def pick_endpoint(candidates: Iterable[DaemonEndpoint]) -> DaemonEndpoint | None:
    """The node's daemon: a ready pod first; during a rolling update two may briefly coexist."""
    ordered = sorted(candidates, key=lambda e: (not e.ready, e.pod))
    return ordered[0] if ordered else None


def parse_flexnpu_info(raw: object) -> dict[str, Registration]:
    """The registrations a daemon holds, by id; entries that are not registrations are skipped."""
    if isinstance(raw, Mapping) and isinstance(raw.get("registrations"), list | Mapping):
        raw = raw["registrations"]
    entries: Iterable[object]
    if isinstance(raw, Mapping):
        entries = [{"flexnpu_id": k, **v} if isinstance(v, Mapping) else v for k, v in raw.items()]
    elif isinstance(raw, list):
        entries = raw
    else:
        raise ValidationError("flexnpu-info", raw, "must be a list or an object of registrations")
    found: dict[str, Registration] = {}
    for entry in entries:
        try:
            registration = parse_registration(entry)
        except ValidationError:
            continue
        found[registration.flexnpu_id] = registration
    return found
