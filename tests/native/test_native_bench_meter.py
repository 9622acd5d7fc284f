"""The oracle-free meter of ``flexnpu bench native_share``: the fake device's kernel log and the window arithmetic.

The log is the fake device's ground truth (shim/simnpu/native/fakedev.h): every kernel's device start and end with
the launching process, written under the device's lock, so two processes' kernels never overlap on its one engine.
"""

from __future__ import annotations

import itertools
import subprocess

import pytest
from native_helpers import Pod, parse

from flexnpu.bench.native_share import Kernel, busy_per_window, percentile, read_kernels, share_errors_pp, summarise

MS = 1_000_000


def test_busy_is_split_at_window_edges_and_partial_windows_are_dropped() -> None:
    kernels = [Kernel(1, 0, 15 * MS), Kernel(2, 15 * MS, 20 * MS), Kernel(3, 0, 50 * MS), Kernel(1, 29 * MS, 40 * MS)]
    busy = busy_per_window(kernels, {1: "a", 2: "b"}, 5 * MS, 36 * MS, 10 * MS)  # 3 full windows: [5, 35)
    assert busy == {"a": [10 * MS, 0, 6 * MS], "b": [0, 5 * MS, 0]}  # pid 3 is no tenant's
    assert busy_per_window(kernels, {1: "a"}, 0, 5 * MS, 10 * MS) == {"a": []}


def test_share_error_is_against_the_device_time_of_the_window() -> None:
    busy = {"a": [2, 0, 5], "b": [8, 0, 5]}
    errors = share_errors_pp(busy, {"a": 0.2, "b": 0.8})
    assert errors == pytest.approx([0.0, 0.0, 30.0, 30.0])  # the idle window is skipped
    assert summarise(errors) == pytest.approx({"mean": 15.0, "max": 30.0})


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([3.0], 99) == 3.0


def test_the_fake_device_logs_every_kernel_of_every_process_on_one_engine(pod_without_daemon: Pod) -> None:
    pod = pod_without_daemon
    env = pod.env(None, preload=False)
    procs = [
        subprocess.Popen([pod.program("acl_prog"), "launch", "30", "200"], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 and parse(o)["launched"] == "30" for p, o in zip(procs, outs, strict=True))
    kernels = read_kernels(pod.device)
    assert sorted({k.pid for k in kernels}) == sorted(p.pid for p in procs)
    assert [k.end_ns - k.start_ns for k in kernels] == [200_000] * 60
    ordered = sorted(kernels, key=lambda k: k.start_ns)
    assert all(a.end_ns <= b.start_ns for a, b in itertools.pairwise(ordered))  # one engine


def test_the_workload_times_each_step_and_keeps_its_kernels_from_the_runtime(pod_without_daemon: Pod) -> None:
    pod = pod_without_daemon
    out = subprocess.run(
        [pod.program("workload_prog"), "steps", "5", "1", "8", "50", "200", "0"],
        env=pod.env(None, preload=False),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = parse(out.stdout)
    steps = [int(v) for v in result["step_ns"].split(",")]
    kernels = read_kernels(pod.device)
    assert result["launched"] == "40" and len(kernels) == 40 and len(steps) == 5
    lengths = [k.end_ns - k.start_ns for k in kernels]
    assert min(lengths) >= 50_000 and max(lengths) <= 200_000 and len(set(lengths)) > 1  # random lengths
    # A step ends at its synchronise: it took at least its own kernels' device time.
    for i, took in enumerate(steps):
        assert took >= sum(lengths[8 * i : 8 * i + 8])
