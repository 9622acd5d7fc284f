"""Issue 10 case 10 on the real components: ``helm install``, ``helm upgrade`` between chart versions and
``helm uninstall``, by Helm itself (helm-python-sdk: Helm's Go SDK) against the real API server.

The previous version is the chart as the first release shipped it (``PREVIOUS``, from the repository's history);
the release ``upg`` of it is upgraded to the chart of this checkout with a user's values, then uninstalled. Helm
applies every object (the API server validates each one), patches on upgrade (a changed immutable field, such as a
Deployment's selector, fails it), runs the lookups against the live objects (the daemon token Secret is kept), and
runs the pre-delete hook. The harness has no Job controller and no kube-proxy (a hook pod could not reach the API
server through the kubernetes Service), so the test stands in for them: when Helm creates the hook Job, it runs the
Job's own command, the script from the hook's ConfigMap, as the hook's ServiceAccount, and writes the Job's
outcome as the Job controller would. A VNpuClaim made while the release was installed is deregistered by the
running operator, the release's namespace is deleted without hanging, and nothing of the release is left.

The suite's stack (release ``flexnpu``) keeps running beside it; its operator and flexnpud serve the claim.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from realk8s_cluster import ControlPlane, write_kubeconfig
from realk8s_flexnpu import REPO, Flexnpu, service_account_token
from realk8s_procs import wait_for
from test_uninstall import hand_claim

from flexnpu import names

pytestmark = [pytest.mark.realk8s, pytest.mark.timeout(600)]

# The chart as the first release shipped it (2026-11-25): device plugin, extender, operator, flexnpud, scheduler.
PREVIOUS = "41f9db0"
RELEASE, NAMESPACE = "upg", "flexnpu-upgrade"
CLAIMS = "claims-upgrade"
# A user's values for the new version: the suite's PriorityClass flexnpu-high exists already, cluster-wide.
UPGRADE_VALUES: dict[str, Any] = {
    "highPriority": {"priorityClass": {"create": False}},
    "extender": {"replicas": 2},
    "releaseClaims": {"waitSeconds": 20},
}
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"


def previous_chart(into: Path) -> Path:
    """deploy/helm/flexnpu as of ``PREVIOUS``, from git (a checkout's history)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", PREVIOUS, "deploy/helm/flexnpu"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        shallow = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--is-shallow-repository"], capture_output=True, text=True
        )
        if shallow.stdout.strip() == "true":
            pytest.skip(f"a shallow clone has no chart {PREVIOUS} to upgrade from (git fetch --unshallow)")
        pytest.fail(f"chart {PREVIOUS} not in the checkout's history: {archive.stderr.decode(errors='replace')}")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    chart = into / "deploy" / "helm" / "flexnpu"
    # Its CRDs (files of crds/) are in this cluster already, the suite's release made them; Helm 4 would apply them
    # over the suite's copies, which another field manager owns (a conflict no real upgrade meets).
    shutil.rmtree(chart / "crds", ignore_errors=True)
    return chart


class HookJobs:
    """What the Job controller and a kubelet would do for the release's hook Jobs: run the Job's command (its
    script from the hook's ConfigMap, its ServiceAccount's token) and write its outcome to the Job's status."""

    def __init__(self, api: k8s.ApiClient, cluster: ControlPlane, work: Path) -> None:
        self.api, self.cluster, self.work = api, cluster, work
        self.ran: list[tuple[str, int, str]] = []  # (job, exit status, output)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> HookJobs:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _watch(self) -> None:
        batch: Any = k8s.BatchV1Api(self.api)
        done: set[str] = set()
        while not self._stop.is_set():
            for job in batch.list_namespaced_job(NAMESPACE, label_selector=INSTANCE).items:
                if job.metadata.uid not in done:
                    done.add(job.metadata.uid)
                    self._run(batch, job)
            self._stop.wait(0.5)

    def _run(self, batch: Any, job: Any) -> None:
        spec = job.spec.template.spec
        [container] = spec.containers
        [mount] = container.volume_mounts
        [volume] = [v for v in spec.volumes if v.name == mount.name]
        core: Any = k8s.CoreV1Api(self.api)
        files: dict[str, str] = core.read_namespaced_config_map(volume.config_map.name, NAMESPACE).data
        folder = self.work / job.metadata.name
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")
        token = service_account_token(self.api, spec.service_account_name, namespace=NAMESPACE)
        kubeconfig = write_kubeconfig(folder / "kubeconfig", self.cluster.server, self.cluster.pki.ca.cert, token=token)
        command = [sys.executable if c == "python" else c for c in container.command]
        command = [c.replace(mount.mount_path, str(folder)) for c in command]
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        run = subprocess.run(
            command, env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True
        )
        self.ran.append((job.metadata.name, run.returncode, run.stdout + run.stderr))
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        ok = run.returncode == 0
        conditions = [
            {"type": "SuccessCriteriaMet" if ok else "FailureTarget", "status": "True", "lastTransitionTime": now},
            {"type": "Complete" if ok else "Failed", "status": "True", "lastTransitionTime": now},
        ]
        status: dict[str, Any] = {"startTime": started, "conditions": conditions}
        status.update({"succeeded": 1, "completionTime": now} if ok else {"failed": 1})
        batch.patch_namespaced_job_status(job.metadata.name, NAMESPACE, {"status": status})


def release_objects(api: k8s.ApiClient) -> list[str]:
    """Objects of the release still on the server (kinds the chart makes), as ``Kind/name``."""
    core: Any = k8s.CoreV1Api(api)
    apps: Any = k8s.AppsV1Api(api)
    rbac: Any = k8s.RbacAuthorizationV1Api(api)
    found: list[str] = []
    listers: list[tuple[str, Callable[[], Any]]] = [
        ("Deployment", lambda: apps.list_deployment_for_all_namespaces(label_selector=INSTANCE)),
        ("DaemonSet", lambda: apps.list_daemon_set_for_all_namespaces(label_selector=INSTANCE)),
        ("ConfigMap", lambda: core.list_config_map_for_all_namespaces(label_selector=INSTANCE)),
        ("Secret", lambda: core.list_secret_for_all_namespaces(label_selector=INSTANCE)),
        ("Service", lambda: core.list_service_for_all_namespaces(label_selector=INSTANCE)),
        ("ServiceAccount", lambda: core.list_service_account_for_all_namespaces(label_selector=INSTANCE)),
        ("ClusterRole", lambda: rbac.list_cluster_role(label_selector=INSTANCE)),
        ("ClusterRoleBinding", lambda: rbac.list_cluster_role_binding(label_selector=INSTANCE)),
    ]
    for kind, lister in listers:
        found += [f"{kind}/{item.metadata.name}" for item in lister().items]
    return found


@pytest.fixture
def helm_config(cluster: ControlPlane, api: k8s.ApiClient, tmp_path: Path) -> Iterator[helm.Config]:
    """Helm with the harness's admin credential (a cluster admin runs helm)."""
    kubeconfig = write_kubeconfig(
        tmp_path / "admin.kubeconfig", cluster.server, cluster.pki.ca.cert, client=cluster.admin
    )
    with helm.Config(kubeconfig_path=kubeconfig, namespace=NAMESPACE) as config:
        try:
            yield config
        finally:  # a failed test must not leave the release's webhooks refusing the suite's vnpu pods
            if config.list(all_states=True, all_namespaces=True, name_filter=f"^{RELEASE}$"):
                with HookJobs(api, cluster, tmp_path / "cleanup"):
                    config.uninstall(RELEASE, timeout=120, ignore_not_found=True)


def test_install_upgrade_from_the_first_release_and_uninstall_leave_nothing_behind(
    flexnpu_stack: Flexnpu, cluster: ControlPlane, api: k8s.ApiClient, core: Any, helm_config: helm.Config,
    tmp_path: Path,
) -> None:  # fmt: skip
    stack = flexnpu_stack
    installed = helm_config.install(
        previous_chart(tmp_path / "previous"), RELEASE, {}, namespace=NAMESPACE, create_namespace=True, timeout=120
    )
    assert (installed["revision"], installed["status"]) == (1, "deployed")
    [token] = core.list_namespaced_secret(NAMESPACE, label_selector=INSTANCE).items
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=CLAIMS)))
    claim = hand_claim(api, cluster, CLAIMS, "held-across-upgrade")
    registration = claim["status"]["flexnpuId"]
    assert registration in stack.registrations()

    with helm.Chart.load(REPO / "deploy" / "helm" / "flexnpu") as chart:
        upgraded = helm_config.upgrade(chart, RELEASE, UPGRADE_VALUES, namespace=NAMESPACE, timeout=120)
    assert (upgraded["revision"], upgraded["status"]) == (2, "deployed")
    new_manifest = [doc for doc in yaml.safe_load_all(upgraded["manifest"]) if doc]
    apps: Any = k8s.AppsV1Api(api)
    extender = apps.read_namespaced_deployment(f"{RELEASE}-flexnpu-extender", NAMESPACE)
    assert extender.spec.replicas == 2
    kept = core.read_namespaced_secret(token.metadata.name, NAMESPACE)
    assert kept.data == token.data  # the daemon token, looked up on the live server, survives the upgrade
    assert all(
        f"{m['kind']}/{m['metadata']['name']}" in release_objects(api)
        for m in new_manifest
        if m["kind"] in ("Deployment", "DaemonSet", "ConfigMap", "Service", "ServiceAccount", "ClusterRole")
    )
    assert registration in stack.registrations()  # the upgrade touched no claim

    with HookJobs(api, cluster, tmp_path / "hooks") as hooks:
        helm_config.uninstall(RELEASE, timeout=180)
    [(job, status, output)] = hooks.ran
    assert job == f"{RELEASE}-flexnpu-release-claims" and status == 0, output

    def claim_gone() -> bool | None:
        try:
            k8s.CustomObjectsApi(api).get_namespaced_custom_object(
                names.CRD_GROUP, names.CRD_VERSION, CLAIMS, names.CRD_PLURAL, "held-across-upgrade"
            )
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return None

    wait_for("the claim deregistered and gone", claim_gone, 60, watch=cluster.procs, interval=0.5)
    assert registration not in stack.registrations()
    assert release_objects(api) == []
    core.delete_namespace(NAMESPACE)
    core.delete_namespace(CLAIMS)

    def namespaces_gone() -> bool | None:
        left = {n.metadata.name for n in core.list_namespace().items} & {NAMESPACE, CLAIMS}
        return None if left else True

    wait_for("the release's namespaces deleted", namespaces_gone, 120, watch=cluster.procs, interval=1)
