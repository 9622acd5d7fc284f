"""``flexnpu status``: what a node daemon holds, per card and per tenant, for the operator on call.

Reads ``GET /device/physical-info`` and ``GET /device/flexnpu-info`` of one flexnpud (standard library HTTP,
so it works from any shell on the node) and prints, per card: units and memory registered, tenants, and per
tenant its target and achieved share, grant wait p99, and device memory used against its cap (the daemon's
memory watch). ``--node NAME`` asks the daemon at ``NAME`` on the
default port (it then needs the daemon's bearer token: ``--token-file``); ``--url`` names any daemon.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flexnpu.shim.daemon.config import DEFAULT_HOST, DEFAULT_PORT, OneLineParser

TIMEOUT_S = 10.0
MIB = 1 << 20


class StatusError(Exception):
    """The daemon cannot be asked (unreachable, refused, or answered something that is not its API)."""


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="flexnpu status",
        description="Per card: units, memory, tenants, achieved "
        "share and grant wait p99, from a node daemon (flexnpud).",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--node", metavar="NAME", help=f"the daemon on node NAME (port {DEFAULT_PORT})")
    where.add_argument(
        "--url", metavar="URL", help=f"the daemon's base URL (default http://{DEFAULT_HOST}:{DEFAULT_PORT})"
    )
    p.add_argument("--token-file", type=Path, metavar="FILE", help="file holding the daemon's bearer token")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return p


def base_url(node: str | None, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    return f"http://{node or DEFAULT_HOST}:{DEFAULT_PORT}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        token = args.token_file.read_text(encoding="utf-8").strip() if args.token_file else ""
        snapshot = fetch(base_url(args.node, args.url), token)
    except OSError as exc:
        print(f"flexnpu status: --token-file {args.token_file}: cannot be read ({exc.strerror})", file=sys.stderr)
        return 2
    except StatusError as exc:
        print(f"flexnpu status: {exc}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(snapshot, indent=1) if args.json else render(snapshot))
    except (KeyError, TypeError, ValueError) as exc:
        print(f"flexnpu status: {snapshot['url']}: not a flexnpud answer (missing or bad {exc})", file=sys.stderr)
        return 1
    return 0


def fetch(base: str, token: str = "") -> dict[str, Any]:
    """``{"cards": [...], "registrations": [...], "quota", "oversubscription"}`` from the daemon at ``base``."""
    physical = _get(f"{base}/device/physical-info", token)
    info = _get(f"{base}/device/flexnpu-info", token)
    return {
        "url": base,
        "quota": physical.get("quota"),
        "oversubscription": physical.get("oversubscription"),
        "cards": physical.get("cards", []),
        "registrations": info.get("registrations", []),
    }


def _get(url: str, token: str) -> Mapping[str, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            document = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise StatusError(f"{url}: HTTP {exc.code} {_error_text(exc)}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusError(f"{url}: daemon unreachable ({reason})") from exc
    except ValueError as exc:
        raise StatusError(f"{url}: not a flexnpud answer ({exc})") from exc
    if not isinstance(document, dict):
        raise StatusError(f"{url}: not a flexnpud answer (a JSON object was expected)")
    return document


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("error", exc.reason))
    except (ValueError, AttributeError, OSError):
        return str(exc.reason)


def render(snapshot: Mapping[str, Any]) -> str:
    """Two tables: the cards, then the tenants grouped by card."""
    cards = [_card_row(c) for c in snapshot["cards"]]
    tenants = [_tenant_row(r) for r in sorted(snapshot["registrations"], key=lambda r: (r["npu"], r["chip"]))]
    head = (
        f"flexnpud at {snapshot['url']}: quota {snapshot['quota']}, oversubscription "
        f"{snapshot['oversubscription']}, {len(tenants)} registration(s)"
    )
    parts = [head, "", table(["npu", "chip", "model", "card", "health", "units", "memory MiB", "tenants"], cards)]
    if tenants:
        parts += [
            "",
            table(
                [
                    "npu",
                    "chip",
                    "flexnpu_id",
                    "entity",
                    "priority",
                    "units",
                    "memory MiB",
                    "target",
                    "achieved",
                    "wait p99 ms",
                    "device memory MiB",
                ],
                tenants,
            ),
        ]
    return "\n".join(parts)


def _card_row(card: Mapping[str, Any]) -> list[str]:
    return [
        str(card["index"]),
        str(card["chip"]),
        card["model"],
        card["uuid"],
        card["health"],
        f"{card['aicore_used']}/{card['aicore_capacity']:g}",
        f"{card['memory_used_mib']}/{card['hbm_mib']}",
        str(card["tenants"]),
    ]


def _tenant_row(view: Mapping[str, Any]) -> list[str]:
    return [
        str(view["npu"]),
        str(view["chip"]),
        view["flexnpu_id"],
        view["entity"] or "-",
        view.get("priority", "normal"),
        str(view["aicore_alloc"]),
        str(view["memory_alloc"]),
        f"{view['target_share']:.1%}",
        f"{view['achieved_share']:.1%}",
        f"{view['wait_p99_us'] / 1000:.3f}",
        memory_cell(view),
    ]


def memory_cell(view: Mapping[str, Any]) -> str:
    """``used/cap`` in MiB from the memory watch (``?`` while unknown), ``OVER by N`` when past the cap."""
    cap = view.get("memory_cap_bytes", int(view["memory_alloc"]) << 20) / MIB
    used = view.get("memory_used_bytes")
    if used is None:
        return f"?/{cap:.0f}"
    cell = f"{used / MIB:.0f}/{cap:.0f}"
    return f"{cell} OVER by {(used / MIB) - cap:.0f}" if view.get("memory_over_cap") else cell


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


if __name__ == "__main__":
    raise SystemExit(main())
