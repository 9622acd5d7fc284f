"""``flexnpu bench placement``: replay the openb GPU-sharing trace through the extender's placement core.

The replay follows shared/data/openb/README.md, the protocol of the FGD paper (Weng et al., USENIX ATC 2023), so
that our figures sit next to the published ones: per seed (42..51) shuffle the pods, append random copies until the
requested cards reach 130% of the cluster, submit each pod once (no retry, no departures), CPU and memory must fit
(the published simulator keeps kube-scheduler's resource filter), card-model constraints (``gpu_spec``) hold. The
files are read by :mod:`flexnpu.bench.openb`, which refuses malformed ones naming file, line and column. A card is U
= 1000 units, so ``gpu_milli`` maps one to one. The metric is the unallocated share of all cards when the arrived
request first reaches 100% and 130% of the cluster, median over the seeds.

Three paths (``--paths``): ``production`` and ``offline`` replay through the extender's service behind a model of
kube-scheduler as the chart configures it (:mod:`flexnpu.bench.placement_production`; shapes learnt online as in
production, or given from the whole trace as the published FGD has them), CPU-only pods going to the default
scheduler; ``production-all`` and ``offline-all`` the same with CPU-only pods opting in to flexnpu-scheduler too;
``core`` calls the placement core directly: ``filter_nodes`` (filter), ``score_nodes`` (prioritize; among the top
scores one is drawn at random) and ``choose`` (bind). Baselines ``bestfit`` and ``fgd`` are our own
implementations of the paper's Best-fit and FGD; ``bestfit-published`` and ``fgd-published`` (``--paths core``
only) are the published simulator's schedulers re-implemented (:mod:`flexnpu.bench.published_scorers`,
:mod:`flexnpu.bench.published_fgd`): their own scores, cards and node choice, ties to the smallest node name.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from flexnpu.bench.common import add_common_args, emit, format_table
from flexnpu.bench.openb import UNITS, TracePod, load_nodes, load_pods
from flexnpu.bench.placement_production import chart_profile, replay_production
from flexnpu.bench.published_scorers import PUBLISHED as PUBLISHED_SCORERS
from flexnpu.bench.published_scorers import assignments, published_placer
from flexnpu.errors import ValidationError
from flexnpu.extender.core.model import NodeState
from flexnpu.extender.core.placement import (
    EvaluationMemo,
    choose,
    filter_nodes,
    policy,
    score_nodes,
    workload_stats,
)
from flexnpu.extender.core.policies import Policy
from flexnpu.extender.core.stats import ClusterStats, model_cards

SEEDS: Final = tuple(range(42, 52))
ARRIVALS: Final = (100, 130)
INFLATE_TO: Final = 1.30
DEFAULT_POLICIES: Final = ("bestfit", "fgd", "fgd-all", "default")
PATHS: Final = ("production", "offline", "production-all", "offline-all", "core")
DEFAULT_PATHS: Final = ("production", "offline")
NODE_FILE: Final = "openb_node_list_gpu_node.csv"
POD_FILE: Final = "openb_pod_list_{}.csv"
ENV_DIR: Final = "FLEXNPU_OPENB_DIR"

# Unallocated % of cards, median of 10 seeds, from shared/data/openb/README.md (the FGD paper).
PUBLISHED: Final[dict[tuple[str, int], dict[str, float]]] = {
    ("default", 100): {"Random": 13.75, "BestFit": 7.09, "FGD": 4.77},
    ("default", 130): {"Random": 12.62, "BestFit": 6.89, "FGD": 4.60},
    ("gpushare40", 100): {"Random": 15.04, "BestFit": 8.53, "FGD": 6.05},
    ("gpushare40", 130): {"Random": 13.97, "BestFit": 8.27, "FGD": 5.86},
    ("gpushare60", 100): {"Random": 17.22, "BestFit": 10.91, "FGD": 8.70},
    ("gpushare60", 130): {"Random": 16.35, "BestFit": 10.65, "FGD": 8.59},
    ("gpushare80", 100): {"Random": 19.35, "BestFit": 13.27, "FGD": 10.91},
    ("gpushare80", 130): {"Random": 18.75, "BestFit": 12.94, "FGD": 10.69},
    ("gpushare100", 100): {"Random": 21.07, "BestFit": 15.40, "FGD": 13.36},
    ("gpushare100", 130): {"Random": 20.53, "BestFit": 14.99, "FGD": 13.10},
    ("gpuspec10", 100): {"Random": 13.69, "BestFit": 6.88, "FGD": 5.30},
    ("gpuspec10", 130): {"Random": 12.49, "BestFit": 6.67, "FGD": 5.06},
    ("gpuspec20", 100): {"Random": 13.91, "BestFit": 11.54, "FGD": 5.31},
    ("gpuspec20", 130): {"Random": 12.60, "BestFit": 6.74, "FGD": 5.14},
}
TRACES: Final = tuple(dict.fromkeys(trace for trace, _ in PUBLISHED))


@dataclass(frozen=True)
class Trace:
    nodes: tuple[NodeState, ...]
    pods: tuple[TracePod, ...]

    @property
    def capacity_milli(self) -> int:
        return UNITS * sum(len(n.cards) for n in self.nodes)


@dataclass(frozen=True)
class SeedResult:
    """Unallocated % at each arrival level, and the replay's accounting."""

    unallocated_pct: dict[int, float]
    arrived_milli: int
    allocated_milli: int
    pods: int
    failed: int


# Benchmark-only variant: the core's FGD cost measured against every shape instead of the 95% cut.
EXTRA_POLICIES: Final[dict[str, Policy]] = {
    "fgd-all": replace(policy("fgd"), name="fgd-all", description="FGD over every shape", shape_coverage=1.0),
}


def bench_policy(name: str) -> Policy:
    """A core policy by name, or one of the benchmark's variants of them (the published scorers pick cards as
    the core policy of the same name)."""
    return EXTRA_POLICIES.get(name) or policy(PUBLISHED_SCORERS.get(name, name))


def trace_stats(pods: Sequence[TracePod], policy_name: str, nodes: Sequence[NodeState] = ()) -> ClusterStats:
    """The typical shapes of the trace's pod list, and the pressure on the card models of ``nodes``, as the
    extender would build them for the policy."""
    return workload_stats([p.demand for p in pods], UNITS, bench_policy(policy_name), model_cards(nodes))


@functools.cache
def load_trace(data_dir: Path, name: str) -> Trace:
    nodes = load_nodes(data_dir / NODE_FILE)
    return Trace(nodes=nodes, pods=load_pods(data_dir / POD_FILE.format(name), nodes))


def arrival_order(pods: Sequence[TracePod], capacity_milli: int, seed: int) -> list[TracePod]:
    """Shuffled with ``seed``, then random copies appended until the requests reach 130% of the cluster."""
    rng = random.Random(seed)
    order = list(pods)
    rng.shuffle(order)
    requested = sum(p.milli for p in order)
    while requested < INFLATE_TO * capacity_milli:
        pod = rng.choice(pods)
        order.append(pod)
        requested += pod.milli
    return order


def replay(
    nodes: Sequence[NodeState],
    order: Sequence[TracePod],
    policy_name: str,
    stats: ClusterStats,
    seed: int,
    workload: Sequence[TracePod] | None = None,
) -> SeedResult:
    """Submit each pod once through filter, prioritize and bind; record the unallocated share at each level.

    A published scheduler (``fgd-published``, ``bestfit-published``) ranks the fitting nodes and picks the cards
    itself, deterministically; its typical pods come from ``workload`` (the trace before inflation; default
    ``order``)."""
    chosen = bench_policy(policy_name)
    published = None
    if policy_name in PUBLISHED_SCORERS:
        published = published_placer(policy_name, [p.demand for p in workload or order], UNITS)
    rng = random.Random(seed)
    memo = EvaluationMemo()
    state = list(nodes)
    where = {n.name: i for i, n in enumerate(state)}
    capacity = UNITS * sum(len(n.cards) for n in nodes)
    arrived = allocated = failed = 0
    levels = list(ARRIVALS)
    unallocated: dict[int, float] = {}
    for pod in order:
        arrived += pod.milli
        fits, _ = filter_nodes(pod.demand, state, memo)
        if fits:
            if published is not None:
                name, positions = published.place(pod.demand, fits)
                node = state[where[name]]
                cards = assignments(pod.demand, next(f for f in fits if f.name == name), positions)
            else:
                scores = score_nodes(pod.demand, fits, chosen, stats, memo)
                top = max(scores.values())
                name = rng.choice([fit.name for fit in fits if scores[fit.name] == top])
                node = state[where[name]]
                cards = choose(pod.demand, node, chosen, stats, memo)
            state[where[name]] = node.with_assignments(cards, pod.demand.cpu_milli, pod.demand.host_memory_mib)
            allocated += pod.milli
        else:
            failed += 1
        while levels and arrived * 100 >= levels[0] * capacity:
            unallocated[levels.pop(0)] = 100.0 - 100.0 * allocated / capacity
    return SeedResult(unallocated, arrived, allocated, len(order), failed)


def run_one(task: tuple[Path, str, str, int]) -> tuple[str, str, int, SeedResult, float]:
    """One replay: ``column`` is a policy name (the core path) or ``policy@production`` / ``policy@offline``."""
    data_dir, trace_name, column, seed = task
    started = time.perf_counter()
    trace = load_trace(data_dir, trace_name)
    order = arrival_order(trace.pods, trace.capacity_milli, seed)
    policy_name, _, path = column.partition("@")
    if path:
        result = replay_through_production(
            trace, order, policy_name, seed, offline=path.startswith("offline"), all_pods=path.endswith("-all")
        )
    else:
        result = replay(
            trace.nodes, order, policy_name, trace_stats(trace.pods, policy_name, trace.nodes), seed, trace.pods
        )
    return trace_name, column, seed, result, time.perf_counter() - started


def replay_through_production(
    trace: Trace, order: Sequence[TracePod], policy_name: str, seed: int, *, offline: bool, all_pods: bool = False
) -> SeedResult:
    """The replay through the extender's service and the kube-scheduler model the chart configures (with
    ``all_pods``, CPU-only pods opt in to flexnpu-scheduler too)."""
    stats = trace_stats(trace.pods, policy_name, trace.nodes) if offline else None
    profile = replace(chart_profile(), cpu_pods_to_extender=all_pods)
    outcome = replay_production(trace.nodes, order, policy_name, seed, ARRIVALS, profile=profile, stats=stats)
    return SeedResult(
        outcome.unallocated_pct, outcome.arrived_milli, outcome.allocated_milli, len(order), outcome.failed
    )


def default_data_dir() -> Path:
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "openb"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flexnpu bench placement", description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default="default", help=f"trace name or 'all' (known: {', '.join(TRACES)})")
    parser.add_argument(
        "--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds, or A-B (default 42-51)"
    )
    parser.add_argument("--policies", default=",".join(DEFAULT_POLICIES), help="comma-separated policy names")
    parser.add_argument(
        "--paths",
        default=",".join(DEFAULT_PATHS),
        help="comma-separated: production (the extender's service behind kube-scheduler as the "
        "chart configures it, shapes learnt online), offline (the same, shapes from the whole "
        "trace), production-all / offline-all (CPU-only pods opt in to flexnpu-scheduler "
        "too), core (the placement core alone, fastest); default production,offline",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"folder of the openb CSV files (default ${ENV_DIR} or ../shared/data/openb)",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--quick", action="store_true", help="three seeds only (42-44)")
    add_common_args(parser)
    return parser.parse_args(argv)


def _seeds(text: str) -> list[int]:
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-", 1))
            return list(range(lo, hi + 1))
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValidationError("--seeds", text, "must be comma-separated integers or A-B") from None


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        traces, seeds, policies, data_dir = _validated(args)
    except ValidationError as exc:
        print(f"flexnpu bench placement: {exc}", file=sys.stderr)
        return 2
    tasks = [(data_dir, t, p, s) for t in traces for p in policies for s in seeds]
    started = time.perf_counter()
    outcomes = []
    with contextlib.ExitStack() as stack:
        if args.workers > 1 and len(tasks) > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(args.workers))
            runs: Iterable[Any] = pool.imap(run_one, tasks, chunksize=1)
        else:
            runs = map(run_one, tasks)
        for done, ((_, trace, policy, seed), outcome) in enumerate(zip(tasks, runs, strict=True), 1):
            outcomes.append(outcome)
            # Progress on stderr: the JSON or the table on stdout stays clean.
            print(
                f"[{done}/{len(tasks)}] {trace} {policy} seed {seed} ({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    result = _summary(outcomes, traces, policies, seeds)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    emit("placement", result, _table(result), args)
    return 0


def _validated(args: argparse.Namespace) -> tuple[list[str], list[int], list[str], Path]:
    traces = list(TRACES) if args.trace == "all" else [args.trace]
    seeds = [42, 43, 44] if args.quick else _seeds(args.seeds)
    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    for name in names:
        bench_policy(name)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    for path in paths:
        if path not in PATHS:
            raise ValidationError("--paths", path, f"unknown path (known: {', '.join(PATHS)})")
    for name in names:
        if name in PUBLISHED_SCORERS and paths != ["core"]:
            raise ValidationError(
                "--policies", name, "a published scheduler replays on the core path only (--paths core)"
            )
    policies = [name if path == "core" else f"{name}@{path}" for path in paths for name in names]
    data_dir: Path = args.data_dir or default_data_dir()
    for trace in traces:
        for path in (data_dir / NODE_FILE, data_dir / POD_FILE.format(trace)):
            if not path.is_file():
                raise ValidationError("--trace" if trace in str(path) else "--data-dir", str(path), "no such file")
    if not seeds:
        raise ValidationError("--seeds", args.seeds, "names no seed")
    if args.workers < 1:
        raise ValidationError("--workers", args.workers, "must be at least 1")
    return traces, seeds, policies, data_dir


def _summary(
    outcomes: Sequence[tuple[str, str, int, SeedResult, float]],
    traces: Sequence[str],
    policies: Sequence[str],
    seeds: Sequence[int],
) -> dict[str, Any]:
    per_trace: dict[str, Any] = {}
    for trace in traces:
        rows = {p: {s: r for t, p2, s, r, _ in outcomes if t == trace and p2 == p} for p in policies}
        times = {p: {s: w for t, p2, s, _, w in outcomes if t == trace and p2 == p} for p in policies}
        per_trace[trace] = {
            "published": {str(level): PUBLISHED[(trace, level)] for level in ARRIVALS if (trace, level) in PUBLISHED},
            "policies": {p: _policy_summary(rows[p], times[p]) for p in policies},
        }
    result: dict[str, Any] = {
        "traces": per_trace,
        "seeds": list(seeds),
        "units_per_card": UNITS,
        "replay_s": round(sum(o[4] for o in outcomes), 1),
    }
    if len(traces) == 1:
        result["trace"] = traces[0]
        result["policies"] = per_trace[traces[0]]["policies"]
    return result


def _policy_summary(by_seed: dict[int, SeedResult], seconds: dict[int, float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for level in ARRIVALS:
        values = [r.unallocated_pct[level] for r in by_seed.values() if level in r.unallocated_pct]
        out[f"unallocated_pct_at_{level}"] = round(statistics.median(values), 3) if values else None
    out["per_seed"] = {
        str(seed): {
            "unallocated_pct_at_100": round(r.unallocated_pct.get(100, float("nan")), 3),
            "unallocated_pct_at_130": round(r.unallocated_pct.get(130, float("nan")), 3),
            "pods": r.pods,
            "failed": r.failed,
        }
        for seed, r in sorted(by_seed.items())
    }
    out["replay_s_median"] = round(statistics.median(times), 1) if (times := list(seconds.values())) else None
    return out


def _table(result: dict[str, Any]) -> str:
    headers = ["trace", "arrival", "Random*", "BestFit*", "FGD*", *next(iter(result["traces"].values()))["policies"]]
    rows: list[list[object]] = []
    for trace, body in result["traces"].items():
        for level in ARRIVALS:
            published = body["published"].get(str(level), {})
            ours = [body["policies"][p][f"unallocated_pct_at_{level}"] for p in body["policies"]]
            rows.append([trace, f"{level}%", *(published.get(k, "-") for k in ("Random", "BestFit", "FGD")), *ours])
    first = next(iter(result["traces"].values()))["policies"]
    times = ", ".join(f"{p} {body['replay_s_median']} s" for p, body in first.items())
    note = (
        f"unallocated % of cards, median of seeds {result['seeds']}; * = published (FGD paper); "
        f"wall {result['wall_s']} s; median time of one replay: {times}; policy@production = through the "
        f"extender's service behind kube-scheduler as the chart configures it, shapes learnt online; "
        f"@offline = the same with the whole trace's shapes; no suffix = the placement core alone"
    )
    return format_table(headers, rows) + "\n" + note
