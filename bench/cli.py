"""``flexnpu bench NAME``: run one benchmark of DESIGN.md section 13 by name."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

BENCHMARKS = {
    "share": "achieved vs target device-time share (virtual and real time), flexnpu vs ungated vs seed ops",
    "native_share": "share error (1 s, 100 ms) and critical p99 vs solo through libflexnpu + flexnpud, real time, "
    "metered by the fake device's kernel log",
    "gpu": "on a CUDA GPU with torch: 2:8 share, critical p99 vs solo, pod-wide memory cap, overhead through "
    "libflexnpu + flexnpud",
    "native_fastpath": "libflexnpu's per-launch cost on the fake AscendCL: ns (wall) and instructions (callgrind)",
    "priority": "latency-critical p99 beside a saturating batch tenant, over its solo p99",
    "overhead": "one tenant gated vs ungated throughput",
    "idle": "work conservation: batch throughput while the critical tenant idles (share_in_idle=true)",
    "grant": "grant round trip p50/p99 and daemon CPU",
    "placement": "openb trace replay: unallocated %% at 100%% and 130%% arrival vs published FGD",
    "extender": "filter+prioritize+bind latency per pod on 5,000 nodes x 8 cards, pods/s",
    "scheduler": "the real kube-scheduler with the extender vs without it: pods/s, bind p50/p99 (5,000 nodes)",
    "dra_placement": "openb replay through the real kube-scheduler: unallocated %% of cards, DRA vs extender",
    "deviceplugin": "Allocate latency and re-registration time after a kubelet restart",
    "operator": "claims registered per second and create-to-Registered p99",
    "operator_real": "the same on the real kube-apiserver: 1,000 claims, 10 flexnpud, create-to-Registered p99",
    "deviceplugin_real": "Allocate p50/p99 through the real kubelet, from its own alloc-duration histogram",
}

NEEDS_KMOCK = {"operator"}
"""Benchmarks that run against the kmock API emulator (flexnpu_testsupport), which comes with the test extra."""
TEST_EXTRA_HINT = "pip install -e '.[test]'"


def usage() -> str:
    width = max(len(n) for n in BENCHMARKS)
    lines = ["usage: flexnpu bench NAME [--json] [--out FILE] [options]", "", "benchmarks:"]
    lines += [f"  {n:<{width}}  {d.replace('%%', '%')}" for n, d in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"flexnpu bench: unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})", file=sys.stderr)
        return 2
    if name in NEEDS_KMOCK and importlib.util.find_spec("kmock") is None:
        print(
            f"flexnpu bench {name}: needs the test extra ({TEST_EXTRA_HINT}): the API server emulator kmock "
            "is not installed",
            file=sys.stderr,
        )
        return 2
    # Benchmarks restart gRPC peers on purpose; gRPC's info logs of the GOAWAYs are noise in their tables.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    module = importlib.import_module(f"flexnpu.bench.{name}")
    result: int = module.main(rest)
    return result
