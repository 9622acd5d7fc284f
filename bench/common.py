"""What every benchmark shares: the ``--json`` / ``--out`` flags and writing its figures to a file.

Benchmarks print figures; they do not pass or fail. Each writes one JSON object to ``--out`` (default
``bench-results/<name>.json``) so that the README can quote what was measured, and with ``--json`` prints the
same object on stdout instead of the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("bench-results")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the JSON figures (default: bench-results/<name>.json)"
    )


def emit(name: str, result: dict[str, Any], table: str, args: argparse.Namespace) -> None:
    """Stamp ``result`` with when and where it was measured, write it to the file, print table or JSON."""
    result = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
        **result,
    }
    out: Path = args.out or RESULTS_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if args.json:
        json.dump(result, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(table)
        print(f"(figures written to {out})")


def format_table(headers: list[str], rows: list[list[object]]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)
