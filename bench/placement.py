"""``flexnpu bench placement``: replay the openb GPU-sharing trace through the extender's placement core.

The replay follows shared/data/openb/README.md, the protocol of the FGD paper (Weng et al., USENIX ATC 2023), so
that our figures sit next to the published ones: per seed (42..51) shuffle the pods, append random copies until
the requested cards reach 130% of the cluster, submit each pod once (no retry, no departures), CPU must fit,
memory is ignored, card-model constraints (``gpu_spec``) hold. A card is U = 1000 units, so ``gpu_milli`` maps
one to one. The metric is the unallocated share of all cards when the arrived request first reaches 100% and
130% of the cluster, median over the seeds.

Each pod goes through the same functions the extender calls: ``filter_nodes`` (filter), ``score_nodes``
(prioritize; among the top scores one is drawn at random, as kube-scheduler does) and ``choose`` (bind).
Baselines ``bestfit`` and ``fgd`` are our own implementations of the paper's Best-fit and FGD.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
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
from flexnpu.errors import ValidationError
from flexnpu.extender.core.model import CPU_ONLY, CardState, NodeState, PodDemand
from flexnpu.extender.core.placement import (
    EvaluationMemo,
    choose,
    filter_nodes,
    policy,
    score_nodes,
    workload_stats,
)
from flexnpu.extender.core.policies import Policy
from flexnpu.extender.core.stats import ClusterStats
from flexnpu.units import UnitsConfig, parse_vnpu_request

UNITS: Final = 1000  # one card = 1000 units, so gpu_milli maps one to one
SEEDS: Final = tuple(range(42, 52))
ARRIVALS: Final = (100, 130)
INFLATE_TO: Final = 1.30
DEFAULT_POLICIES: Final = ("bestfit", "fgd", "fgd-all", "default")
NODE_FILE: Final = "openb_node_list_gpu_node.csv"
POD_FILE: Final = "openb_pod_list_{}.csv"
ENV_DIR: Final = "FLEXNPU_OPENB_DIR"

# Unallocated % of cards, median of 10 seeds, from shared/data/openb/README.md (the FGD paper).
PUBLISHED: Final[dict[tuple[str, int], dict[str, float]]] = {
    ("default", 100): {"Random": 13.75, "BestFit": 7.09, "FGD": 4.77},
    ("default", 130): {"Random": 12.62, "BestFit": 6.89, "FGD": 4.60},
    ("gpushare40", 130): {"Random": 13.97, "BestFit": 8.27, "FGD": 5.86},
    ("gpushare60", 130): {"Random": 16.35, "BestFit": 10.65, "FGD": 8.59},
    ("gpushare80", 130): {"Random": 18.75, "BestFit": 12.94, "FGD": 10.69},
    ("gpushare100", 130): {"Random": 20.53, "BestFit": 14.99, "FGD": 13.10},
    ("gpuspec10", 130): {"Random": 12.49, "BestFit": 6.67, "FGD": 5.06},
    ("gpuspec20", 130): {"Random": 12.60, "BestFit": 6.74, "FGD": 5.14},
}
TRACES: Final = tuple(dict.fromkeys(trace for trace, _ in PUBLISHED))


@dataclass(frozen=True)
class TracePod:
    """One row of a pod list: what it asks for, and how many thousandths of a card that is in all."""

    demand: PodDemand
    milli: int


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
    """A core policy by name, or one of the benchmark's variants of them."""
    return EXTRA_POLICIES.get(name) or policy(name)


def load_nodes(path: Path) -> tuple[NodeState, ...]:
    """The cluster: one node per row, ``gpu`` cards of ``model`` (U = 1000, memory not tracked), its CPU."""
    nodes = []
    for row in _rows(path):
        name, count = row["sn"], int(row["gpu"])
        cards = tuple(CardState(uuid=f"{name}-{i}", index=i, model=row["model"], units_total=UNITS, units_used=0,
                                memory_total_mib=0, memory_used_mib=0, healthy=True) for i in range(count))
        nodes.append(NodeState(name=name, cards=cards, units_per_card=UNITS, cpu_milli_total=int(row["cpu_milli"])))
    return tuple(nodes)


def load_pods(path: Path) -> tuple[TracePod, ...]:
    """The pods in file order; memory is left out on purpose (the published replay ignores it)."""
    config = UnitsConfig(units_per_card=UNITS)
    pods = []
    for row in _rows(path):
        cards, milli = int(row["num_gpu"]), int(row["gpu_milli"])
        request = CPU_ONLY if cards == 0 else parse_vnpu_request(milli if cards == 1 else cards * UNITS, config)
        models = frozenset(m for m in row["gpu_spec"].split("|") if m)
        demand = PodDemand(request=request, models=models, cpu_milli=int(row["cpu_milli"]))
        pods.append(TracePod(demand=demand, milli=cards * milli))
    return tuple(pods)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def trace_stats(pods: Sequence[TracePod], policy_name: str) -> ClusterStats:
    """The typical shapes of the trace's pod list, as the extender would build them for the policy."""
    return workload_stats([p.demand for p in pods], UNITS, bench_policy(policy_name))


@functools.cache
def load_trace(data_dir: Path, name: str) -> Trace:
    pods = load_pods(data_dir / POD_FILE.format(name))
    return Trace(nodes=load_nodes(data_dir / NODE_FILE), pods=pods)


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


def replay(nodes: Sequence[NodeState], order: Sequence[TracePod], policy_name: str, stats: ClusterStats,
           seed: int) -> SeedResult:
    """Submit each pod once through filter, prioritize and bind; record the unallocated share at each level."""
    chosen = bench_policy(policy_name)
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
            scores = score_nodes(pod.demand, fits, chosen, stats, memo)
            top = max(scores.values())
            name = rng.choice([fit.name for fit in fits if scores[fit.name] == top])
            node = state[where[name]]
            cards = choose(pod.demand, node, chosen, stats, memo)
            state[where[name]] = node.with_assignments(cards, pod.demand.cpu_milli)
            allocated += pod.milli
        else:
            failed += 1
        while levels and arrived * 100 >= levels[0] * capacity:
            unallocated[levels.pop(0)] = 100.0 - 100.0 * allocated / capacity
    return SeedResult(unallocated, arrived, allocated, len(order), failed)


def run_one(task: tuple[Path, str, str, int]) -> tuple[str, str, int, SeedResult, float]:
    data_dir, trace_name, policy_name, seed = task
    started = time.perf_counter()
    trace = load_trace(data_dir, trace_name)
    order = arrival_order(trace.pods, trace.capacity_milli, seed)
    stats = trace_stats(trace.pods, policy_name)
    result = replay(trace.nodes, order, policy_name, stats, seed)
    return trace_name, policy_name, seed, result, time.perf_counter() - started


def default_data_dir() -> Path:
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "openb"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flexnpu bench placement", description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default="default", help=f"trace name or 'all' (known: {', '.join(TRACES)})")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)),
                        help="comma-separated seeds, or A-B (default 42-51)")
    parser.add_argument("--policies", default=",".join(DEFAULT_POLICIES), help="comma-separated policy names")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"folder of the openb CSV files (default ${ENV_DIR} or ../shared/data/openb)")
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
            print(f"[{done}/{len(tasks)}] {trace} {policy} seed {seed} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    result = _summary(outcomes, traces, policies, seeds)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    emit("placement", result, _table(result), args)
    return 0


def _validated(args: argparse.Namespace) -> tuple[list[str], list[int], list[str], Path]:
    traces = list(TRACES) if args.trace == "all" else [args.trace]
    seeds = [42, 43, 44] if args.quick else _seeds(args.seeds)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    for name in policies:
        bench_policy(name)
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


def _summary(outcomes: Sequence[tuple[str, str, int, SeedResult, float]], traces: Sequence[str],
             policies: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    per_trace: dict[str, Any] = {}
    for trace in traces:
        rows = {p: {s: r for t, p2, s, r, _ in outcomes if t == trace and p2 == p} for p in policies}
        per_trace[trace] = {
            "published": {str(level): PUBLISHED[(trace, level)] for level in ARRIVALS if (trace, level) in PUBLISHED},
            "policies": {p: _policy_summary(rows[p]) for p in policies},
        }
    result: dict[str, Any] = {"traces": per_trace, "seeds": list(seeds), "units_per_card": UNITS,
                              "replay_s": round(sum(o[4] for o in outcomes), 1)}
    if len(traces) == 1:
        result["trace"] = traces[0]
        result["policies"] = per_trace[traces[0]]["policies"]
    return result


def _policy_summary(by_seed: dict[int, SeedResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for level in ARRIVALS:
        values = [r.unallocated_pct[level] for r in by_seed.values() if level in r.unallocated_pct]
        out[f"unallocated_pct_at_{level}"] = round(statistics.median(values), 3) if values else None
    out["per_seed"] = {str(seed): {"unallocated_pct_at_100": round(r.unallocated_pct.get(100, float("nan")), 3),
                                   "unallocated_pct_at_130": round(r.unallocated_pct.get(130, float("nan")), 3),
                                   "pods": r.pods, "failed": r.failed}
                       for seed, r in sorted(by_seed.items())}
    return out


def _table(result: dict[str, Any]) -> str:
    headers = ["trace", "arrival", "Random*", "BestFit*", "FGD*", *next(iter(result["traces"].values()))["policies"]]
    rows: list[list[object]] = []
    for trace, body in result["traces"].items():
        for level in ARRIVALS:
            published = body["published"].get(str(level), {})
            ours = [body["policies"][p][f"unallocated_pct_at_{level}"] for p in body["policies"]]
            rows.append([trace, f"{level}%", *(published.get(k, "-") for k in ("Random", "BestFit", "FGD")), *ours])
    note = (f"unallocated % of cards, median of seeds {result['seeds']}; * = published (FGD paper); "
            f"wall {result['wall_s']} s")
    return format_table(headers, rows) + "\n" + note
