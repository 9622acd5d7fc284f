"""What the benchmarks on the real control plane share (``operator_real``, ``deviceplugin_real``).

The upstream components come from the realk8s harness (tests/realk8s: the multi-call binary that
``tests/realk8s/build.sh`` builds and its Python side), imported from the source checkout as ``bench scheduler``
does, so these benchmarks need a checkout. Here: the harness import, an admin API client, a watch that resumes
when the API server ends it, kubelet's own ``/metrics`` (read with the admin client certificate on the port the
harness wrote into the node's kubelet.yaml) and the Prometheus histograms read back from it.
"""

from __future__ import annotations

import importlib
import math
import os
import ssl
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "tests" / "realk8s"


@dataclass(frozen=True)
class Harness:
    """The realk8s harness modules: the control plane, flexnpu's components on it, and process waits."""

    cluster: ModuleType
    flexnpu: ModuleType
    procs: ModuleType


def harness(bench: str) -> Harness:
    """The harness imported from the source checkout; SystemExit naming what is missing otherwise."""
    if not (HARNESS / "realk8s_cluster.py").is_file():
        raise SystemExit(f"flexnpu bench {bench}: needs a source checkout ({HARNESS} is missing)")
    if str(HARNESS) not in sys.path:
        sys.path.insert(0, str(HARNESS))
    found = Harness(*(importlib.import_module(m) for m in ("realk8s_cluster", "realk8s_flexnpu", "realk8s_procs")))
    binary = found.cluster.binary_path()
    if not binary.is_file():
        raise SystemExit(f"flexnpu bench {bench}: {binary} missing: run tests/realk8s/build.sh")
    return found


def cpu_seconds(groups: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each named process group, its reaped children included, and by
    this client (``client``)."""
    tick = os.sysconf("SC_CLK_TCK")
    by_group = {pgid: 0.0 for pgid in groups.values()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while the table was read
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        pgid = int(fields[2])
        if pgid in by_group:
            # utime, stime, and cutime, cstime: the children it has reaped (a component's short-lived helpers)
            by_group[pgid] += sum(int(f) for f in fields[11:15]) / tick
    used = {name: by_group[pgid] for name, pgid in groups.items()}
    me = os.times()
    used["client"] = me.user + me.system
    return used


def admin_client(plane: Any, pool: int = 16) -> Any:
    """An API client with the harness's admin client certificate (system:masters)."""
    from kubernetes import client as k8s

    config = k8s.Configuration()
    config.host, config.ssl_ca_cert = plane.server, str(plane.pki.ca.cert)
    config.cert_file, config.key_file = str(plane.admin.cert), str(plane.admin.key)
    config.connection_pool_maxsize = pool
    return k8s.ApiClient(config)


def make_namespace(h: Harness, plane: Any, core: Any, namespace: str, service_account: bool = True) -> None:
    """Namespace ``namespace``; with ``service_account``, once its ``default`` ServiceAccount exists (pods need it)."""
    from kubernetes import client as k8s

    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    if service_account:
        h.procs.wait_for(
            f"ServiceAccount {namespace}/default",
            lambda: core.read_namespaced_service_account("default", namespace),
            120,
            watch=plane.procs,
            interval=0.2,
        )


class Watcher:
    """A thread that follows a list-and-watch from the version of a first list, resuming where the server ended
    each stream, and hands every object to ``seen`` with the monotonic time its event arrived."""

    def __init__(self, lister: Callable[..., Any], args: tuple[Any, ...], seen: Callable[[Any, float], None]) -> None:
        self.lister, self.args, self.seen = lister, args, seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        listed = self.lister(*self.args)
        self.version = listed["metadata"]["resourceVersion"] if isinstance(listed, dict) else None
        if self.version is None:
            self.version = listed.metadata.resource_version
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from kubernetes import watch as watch_module
        from urllib3.exceptions import ProtocolError, ReadTimeoutError

        watch: Any = watch_module  # the client's watch module is untyped
        while not self._stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(self.lister, *self.args, resource_version=self.version, timeout_seconds=5):
                    arrived = time.monotonic()
                    obj = event["object"]
                    meta = obj["metadata"] if isinstance(obj, dict) else None
                    self.version = meta["resourceVersion"] if meta else obj.metadata.resource_version
                    self.seen(obj, arrived)
                    if self._stop.is_set():
                        stream.stop()
            except (ProtocolError, ReadTimeoutError):  # the server closed the stream: watch again from ``version``
                continue


# -- kubelet's /metrics ----------------------------------------------------------------------------------------


def kubelet_port(node: Any) -> int:
    """The kubelet's serving port, from the KubeletConfiguration the harness wrote for ``node``."""
    config = yaml.safe_load((node.work / "kubelet.yaml").read_text(encoding="utf-8"))
    return int(config["port"])


def kubelet_metrics(plane: Any, node: Any) -> str:
    """GET /metrics of ``node``'s kubelet, authenticated with the admin client certificate.

    Kubelet serves with the self-signed certificate it made in its cert dir (the harness gives it no serving
    certificate); that certificate is the trust anchor here, for the loopback address it listens on.
    """
    context = ssl.create_default_context(cafile=str(node.work / "kubelet-pki" / "kubelet.crt"))
    context.check_hostname = False
    context.load_cert_chain(str(plane.admin.cert), str(plane.admin.key))
    url = f"https://127.0.0.1:{kubelet_port(node)}/metrics"
    with urllib.request.urlopen(url, context=context, timeout=10) as resp:
        text: str = resp.read().decode("utf-8")
        return text


@dataclass(frozen=True)
class Histogram:
    """One Prometheus histogram series: cumulative counts per upper bound (``inf`` last), count and sum."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float

    def minus(self, before: Histogram | None) -> Histogram:
        """The observations made since ``before`` (same bucket bounds)."""
        if before is None:
            return self
        old = dict(before.buckets)
        return Histogram(
            tuple((le, n - old.get(le, 0.0)) for le, n in self.buckets),
            self.count - before.count,
            self.sum - before.sum,
        )

    def quantile(self, q: float) -> tuple[float, float]:
        """(estimate, bound) for quantile ``q``: the estimate interpolated linearly inside its bucket as
        Prometheus's histogram_quantile does, and the upper bound of that bucket (the value is at most this).
        In the ``+Inf`` bucket the estimate is the largest finite bound (the value is at least this) and the bound
        ``inf``. NaN without observations."""
        if self.count <= 0:
            return math.nan, math.nan
        rank = q * self.count
        lower, below = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(le):
                    return lower, le
                inside = cumulative - below
                fraction = (rank - below) / inside if inside > 0 else 1.0
                return lower + (le - lower) * fraction, le
            lower, below = le, cumulative
        return lower, math.inf


def parse_histogram(text: str, name: str, labels: Mapping[str, str]) -> Histogram | None:
    """The series of histogram ``name`` whose labels include ``labels``, from Prometheus text; None when absent
    (a labelled histogram appears only after its first observation)."""
    buckets: dict[float, float] = {}
    count = total = None
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            if sample.name == f"{name}_bucket":
                buckets[float(sample.labels["le"])] = float(sample.value)
            elif sample.name == f"{name}_count":
                count = float(sample.value)
            elif sample.name == f"{name}_sum":
                total = float(sample.value)
    if not buckets or count is None or total is None:
        return None
    return Histogram(tuple(sorted(buckets.items())), count, total)


# -- figures ------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def chunks(count: int, size: int) -> Iterator[range]:
    """``range(count)`` cut into ranges of at most ``size``."""
    for start in range(0, count, size):
        yield range(start, min(count, start + size))
