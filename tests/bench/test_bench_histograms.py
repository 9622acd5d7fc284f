"""How the real-control-plane benchmarks read Prometheus histograms (kubelet's alloc duration) and percentiles."""

from __future__ import annotations

import math

import pytest

from flexnpu.bench._realk8s import Histogram, chunks, parse_histogram, percentile

KUBELET_TEXT = """\
# HELP kubelet_device_plugin_alloc_duration_seconds [ALPHA] Duration in seconds to serve an Allocation.
# TYPE kubelet_device_plugin_alloc_duration_seconds histogram
kubelet_device_plugin_alloc_duration_seconds_bucket{resource_name="huawei.com/vnpu",le="0.005"} 0
kubelet_device_plugin_alloc_duration_seconds_bucket{resource_name="huawei.com/vnpu",le="0.01"} 4
kubelet_device_plugin_alloc_duration_seconds_bucket{resource_name="huawei.com/vnpu",le="0.025"} 9
kubelet_device_plugin_alloc_duration_seconds_bucket{resource_name="huawei.com/vnpu",le="+Inf"} 10
kubelet_device_plugin_alloc_duration_seconds_sum{resource_name="huawei.com/vnpu"} 0.15
kubelet_device_plugin_alloc_duration_seconds_count{resource_name="huawei.com/vnpu"} 10
kubelet_device_plugin_alloc_duration_seconds_bucket{resource_name="other.io/gpu",le="0.005"} 7
kubelet_device_plugin_alloc_duration_seconds_bucket{resource_name="other.io/gpu",le="0.01"} 7
kubelet_device_plugin_alloc_duration_seconds_bucket{resource_name="other.io/gpu",le="0.025"} 7
kubelet_device_plugin_alloc_duration_seconds_bucket{resource_name="other.io/gpu",le="+Inf"} 7
kubelet_device_plugin_alloc_duration_seconds_sum{resource_name="other.io/gpu"} 0.01
kubelet_device_plugin_alloc_duration_seconds_count{resource_name="other.io/gpu"} 7
"""
METRIC = "kubelet_device_plugin_alloc_duration_seconds"


def test_parse_picks_the_series_of_the_labels() -> None:
    hist = parse_histogram(KUBELET_TEXT, METRIC, {"resource_name": "huawei.com/vnpu"})
    assert hist == Histogram(((0.005, 0.0), (0.01, 4.0), (0.025, 9.0), (math.inf, 10.0)), 10.0, 0.15)


@pytest.mark.parametrize(
    ("name", "labels"), [(METRIC, {"resource_name": "absent"}), ("no_such_metric", {}), (METRIC, {"le": "nope"})]
)
def test_parse_answers_none_for_a_missing_series(name: str, labels: dict[str, str]) -> None:
    assert parse_histogram(KUBELET_TEXT, name, labels) is None


def hist(*cumulative: float, bounds: tuple[float, ...] = (0.005, 0.01, 0.025, math.inf)) -> Histogram:
    return Histogram(tuple(zip(bounds, cumulative, strict=True)), cumulative[-1], 0.0)


@pytest.mark.parametrize(
    ("h", "q", "estimate", "bound"),
    [
        (hist(0, 4, 9, 10), 0.5, 0.01 + 0.015 * (1 / 5), 0.025),  # rank 5: the first of the 5 in (10, 25] ms
        (hist(0, 4, 9, 10), 0.4, 0.01, 0.01),  # rank 4: exactly the last in (5, 10] ms
        (hist(2, 2, 2, 2), 0.5, 0.0025, 0.005),  # the first bucket starts at 0
        (hist(0, 4, 9, 10), 0.99, 0.025, math.inf),  # the +Inf bucket: at least the largest finite bound
    ],
)
def test_quantile_interpolates_inside_its_bucket(h: Histogram, q: float, estimate: float, bound: float) -> None:
    got_estimate, got_bound = h.quantile(q)
    assert got_estimate == pytest.approx(estimate)
    assert got_bound == bound


def test_quantile_of_no_observations_is_nan() -> None:
    assert all(math.isnan(v) for v in hist(0, 0, 0, 0).quantile(0.99))


def test_minus_leaves_the_observations_in_between() -> None:
    before = Histogram(((0.005, 1.0), (math.inf, 2.0)), 2.0, 0.5)
    after = Histogram(((0.005, 4.0), (math.inf, 7.0)), 7.0, 1.25)
    assert after.minus(before) == Histogram(((0.005, 3.0), (math.inf, 5.0)), 5.0, 0.75)
    assert after.minus(None) == after


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([3.0, 1.0, 2.0], 0.5, 2.0), (list(map(float, range(1, 101))), 0.99, 99.0), ([5.0], 0.99, 5.0)],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_chunks_cover_the_range_in_order() -> None:
    assert [list(r) for r in chunks(5, 2)] == [[0, 1], [2, 3], [4]]
