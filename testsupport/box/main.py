"""``flexnpu demo --cluster``: run the cluster in a box and print its figures.

Starts every component as a separate process against the kmock API emulator (see ``flexnpu_testsupport.box``),
runs the scenario (``flexnpu_testsupport.box.scenario``) and prints achieved shares, the critical pod's step
latency, the component restarts survived and the malformed requests each endpoint received and how many crashed
it. ``--json`` prints one JSON object instead of the tables. The exit status is 1 when a restart disturbed a
pod, lost a registration or double-booked a card, or a malformed request crashed a component.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # kubelet restarts make gRPC log GOAWAYs; they are expected

from flexnpu_testsupport.box.cluster import Box, BoxConfig
from flexnpu_testsupport.box.processes import BoxError
from flexnpu_testsupport.box.scenario import Report, Scenario


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flexnpu demo --cluster", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--seconds", type=float, default=3.0, help="length of the share measurement (default 3)")
    p.add_argument("--workdir", type=Path, default=None, help="keep logs and state here (default: a temp dir)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(argv) if argv is not None else None)
    if importlib.util.find_spec("kmock") is None:
        print(
            "flexnpu demo --cluster: the API server emulator kmock is not installed (pip install -e '.[test]')",
            file=sys.stderr,
        )
        return 2
    if not 0.5 <= args.seconds <= 600:
        print(f"flexnpu demo --cluster: --seconds={args.seconds}: must be in 0.5..600", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="flexnpu-box-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            report = run(workdir, args.seconds)
        except BoxError as exc:
            print(f"flexnpu demo --cluster: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(report.as_dict(), indent=None if args.json else 2) if args.json else render(report))
    return 0 if healthy(report) else 1


def run(workdir: Path, seconds: float) -> Report:
    with Box(workdir, BoxConfig()) as box:
        scenario = Scenario(box)
        try:
            return scenario.run(measure_seconds=seconds)
        finally:
            scenario.close()


def healthy(report: Report) -> bool:
    restarts_ok = all(
        r.containers_alive and r.containers_progressed and not r.registrations_lost and not r.double_booked
        for r in report.restarts
    )
    return (
        restarts_ok
        and report.faults_total.get("crashed", 0) == 0
        and not report.double_booked
        and report.registrations_lost == 0
    )


def render(report: Report) -> str:
    lines = [
        "cluster in a box: kmock API + extender + operator + device plugin + flexnpud + simulated 910B3",
        f"placements: {report.placements}",
        "",
        f"shares over the measurement window ({report.share_source}):",
        f"  {'pod':<10} {'units':>5} {'achieved':>9} {'of busy':>8} {'batch split':>12} {'target':>7}",
    ]
    for name, s in report.shares.items():
        split = f"{s['achieved_batch_split']:.3f}" if "achieved_batch_split" in s else "-"
        target = f"{s['target_batch_split']:.3f}" if "target_batch_split" in s else "-"
        lines.append(
            f"  {name:<10} {s['units']:>5.0f} {s['achieved_share']:>9.3f} {s['share_of_busy']:>8.3f} "
            f"{split:>12} {target:>7}"
        )
    lat = report.critical_latency_us
    if lat:
        lines.append(
            f"critical pod step latency (4 x 250 us kernels): p50 {lat['p50']:.0f} us, p99 {lat['p99']:.0f} "
            f"us, max {lat['max']:.0f} us over {lat['steps']:.0f} steps"
        )
    lines += [
        "",
        "component restarts (while the pods run):",
        f"  {'component':<13} {'ready s':>7} {'alive':>6} {'progress':>9} {'regs lost':>9} {'double-booked':>14}",
    ]
    for r in report.restarts:
        lines.append(
            f"  {r.component:<13} {r.seconds_to_ready:>7.2f} {r.containers_alive!s:>6} "
            f"{r.containers_progressed!s:>9} {r.registrations_lost:>9} {len(r.double_booked):>14}"
        )
    lines += ["", "malformed requests:", f"  {'endpoint':<55} {'sent':>5} {'crashed':>8} {'unhandled':>10}"]
    for f in report.faults:
        lines.append(f"  {f['endpoint']:<55} {f['sent']:>5} {f['crashed']:>8} {f['unhandled']:>10}")
    total = report.faults_total
    lines.append(
        f"  {'total':<55} {total.get('sent', 0):>5} {total.get('crashed', 0):>8} {total.get('unhandled', 0):>10}"
    )
    lines += [
        "",
        f"registrations lost: {report.registrations_lost}; double-booked cards: {len(report.double_booked)}; "
        f"probe pod past the card's free units refused: {report.probe_refused}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
