"""Fixtures of the realk8s suite: one upstream control plane and kubelet per session (see realk8s_cluster).

The suite needs the binary tests/realk8s/build.sh builds. Without it every test here is skipped with the reason,
unless FLEXNPU_REALK8S=1 is set (CI): then a missing binary is a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from realk8s_cluster import ControlPlane, binary_path
from realk8s_flexnpu import INVENTORY, Flexnpu
from realk8s_procs import wait_for

from flexnpu import names


def leftover_processes(work: Path) -> list[str]:
    """Processes whose command line or working directory lies in the suite's work directory."""
    marker = str(work)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if marker in cmdline or cwd.startswith(marker):
            found.append(f"{entry.name}: {cmdline.strip()} (cwd {cwd})")
    return found


WORK_DIR = pytest.StashKey[Path]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing realk8s test names the directory holding every component's log."""
    report: pytest.TestReport = yield
    work = item.config.stash.get(WORK_DIR, None)
    if report.failed and work is not None:
        report.sections.append(("realk8s", f"component logs: {work / 'logs'}"))
    return report


@pytest.fixture(scope="session")
def realk8s_binary() -> Path:
    path = binary_path()
    if not os.access(path, os.X_OK):
        message = f"realk8s binary {path} missing: run tests/realk8s/build.sh"
        if os.environ.get("FLEXNPU_REALK8S") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


# A Unix socket's path holds at most 107 bytes (sun_path), and kubelet's plugin sockets lie five directories deep
# in the work directory: under pytest's basetemp (/tmp/pytest-of-<user>/pytest-<n>/realk8s0) they passed it once n
# had three digits, and the DRA plugin could not bind its registration socket.
LONGEST_SOCKET = "nodes/realk8s-dra/kubelet/plugins_registry/npu.flexnpu.io-reg.sock"
SUN_PATH_MAX = 107


@pytest.fixture(scope="session")
def cluster(realk8s_binary: Path, request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """The control plane in a short work directory of its own (kept, and named in the report, when a test failed)."""
    work = Path(tempfile.mkdtemp(prefix="rk8s-"))
    longest = work / LONGEST_SOCKET
    assert len(str(longest).encode()) <= SUN_PATH_MAX, f"socket path too long for AF_UNIX: {longest}"
    plane = ControlPlane(binary=realk8s_binary, work=work)
    request.config.stash[WORK_DIR] = plane.work
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()
    left = leftover_processes(plane.work)
    assert not left, "processes left behind by the realk8s control plane:\n" + "\n".join(left)
    if not request.session.testsfailed:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def api(cluster: ControlPlane) -> Iterator[k8s.ApiClient]:
    """An admin API client (client certificate in system:masters)."""
    config = k8s.Configuration()
    config.host, config.ssl_ca_cert = cluster.server, str(cluster.pki.ca.cert)
    config.cert_file, config.key_file = str(cluster.admin.cert), str(cluster.admin.key)
    with k8s.ApiClient(config) as client:
        yield client


@pytest.fixture(scope="session")
def core(api: k8s.ApiClient) -> Any:
    return k8s.CoreV1Api(api)


@pytest.fixture(scope="session")
def ready_node(cluster: ControlPlane, core: Any) -> Any:
    """The kubelet's Node, once Ready (and namespace default's ServiceAccount, which pods need, made)."""
    wait_for(
        "ServiceAccount default/default",
        lambda: core.read_namespaced_service_account("default", "default"),
        120,
        watch=cluster.procs,
        interval=0.5,
    )

    def node_ready() -> Any:
        node = core.read_node(cluster.node_name)
        ready = [c for c in node.status.conditions or [] if c.type == "Ready"]
        return node if ready and ready[0].status == "True" else None

    return wait_for("node Ready", node_ready, 180, watch=cluster.procs, interval=0.5)


@pytest.fixture(scope="session")
def flexnpu_stack(cluster: ControlPlane, api: k8s.ApiClient, core: Any, ready_node: Any) -> Flexnpu:
    """The chart's RBAC, CRDs and daemon-token Secret applied; flexnpud running as the node DaemonSet's pod;
    device plugin, extender, flexnpu-scheduler and operator running with SA tokens, and the node advertising
    units (pods created before that wait up to 5 minutes in kube-scheduler's queue)."""
    stack = Flexnpu(cluster, api)
    stack.install_rbac_and_crds()
    stack.install_daemon_token()
    stack.start_daemon()
    stack.start_operator()
    stack.start_device_plugin(INVENTORY)
    stack.start_extender()
    stack.start_scheduler()

    def advertised() -> bool | None:
        capacity = core.read_node(cluster.node_name).status.capacity or {}
        return True if capacity.get(names.RESOURCE_VNPU) else None

    wait_for("huawei.com/vnpu capacity", advertised, 120, watch=cluster.procs, interval=0.5)
    return stack
