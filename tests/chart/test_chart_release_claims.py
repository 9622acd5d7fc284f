"""Issue 10 case 10: `helm uninstall` (and an upgrade to mode dra) leaves no VNpuClaim stuck on the operator's
finalizer. The hook's objects as rendered, and files/release-claims.py, the hook's script, against an API fake
that keeps a deleted object while it has finalizers, as the API server does."""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import pytest
from chart_support import CHART_DIR, Manifest, Render, find, only
from kubernetes.client.exceptions import ApiException

from flexnpu import names

SCRIPT = CHART_DIR / "files" / "release-claims.py"
HOOK_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Job")


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("release_claims", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = load_script()


def hook_objects(manifests: list[Manifest]) -> dict[str, Manifest]:
    return {m["kind"]: m for m in manifests if m["metadata"].get("labels", {}).get(
        "app.kubernetes.io/component") == "release-claims"}  # fmt: skip


@pytest.mark.parametrize(
    ("values", "hooks", "wait"), [({}, "pre-delete", 60), ({"mode": "dra"}, "pre-delete,pre-upgrade", 0)]
)
def test_the_hook_runs_before_uninstall(render: Render, values: dict[str, Any], hooks: str, wait: int) -> None:
    objects = hook_objects(render(values))
    assert set(objects) == set(HOOK_KINDS)
    for kind, manifest in objects.items():
        annotations = manifest["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == hooks
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        # Account, rights and script exist before the Job starts.
        assert (
            int(annotations["helm.sh/hook-weight"]) < 0 if kind != "Job" else annotations["helm.sh/hook-weight"] == "0"
        )
    job = objects["Job"]["spec"]["template"]["spec"]
    [container] = job["containers"]
    [mount] = container["volumeMounts"]
    assert container["command"] == ["python", f"{mount['mountPath']}/release-claims.py", f"--wait-seconds={wait}"]
    assert job["serviceAccountName"] == objects["ServiceAccount"]["metadata"]["name"]
    assert objects["ConfigMap"]["data"]["release-claims.py"] == SCRIPT.read_text(encoding="utf-8")
    assert script.FINALIZER == names.CLAIM_FINALIZER
    assert (script.GROUP, script.VERSION, script.PLURAL) == (names.CRD_GROUP, names.CRD_VERSION, names.CRD_PLURAL)


def test_the_hook_can_be_turned_off(render: Render) -> None:
    assert hook_objects(render({"releaseClaims": {"enabled": False}})) == {}
    assert find(render({"releaseClaims": {"enabled": False}}), "Job") == []


def test_the_wait_follows_the_values(render: Render) -> None:
    job = only(render({"releaseClaims": {"waitSeconds": 5}}), "Job", "release-claims")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--wait-seconds=5"


class FakeClaims:
    """CustomObjectsApi over VNpuClaims: delete marks a claim with finalizers, removing them all deletes it."""

    def __init__(self, *claims: tuple[str, str, list[str]], operator_after: int | None = None) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {
            (ns, n): {"metadata": {"namespace": ns, "name": n, "finalizers": list(f)}} for ns, n, f in claims
        }
        self.operator_after = operator_after  # lists after which a running operator releases every claim
        self.lists = 0
        self.patched: list[tuple[str, str]] = []
        self.refuse_patch = False
        self.crd = True

    def list_cluster_custom_object(self, group: str, version: str, plural: str) -> dict[str, Any]:
        if not self.crd:
            raise ApiException(status=404, reason="Not Found")
        self.lists += 1
        if self.operator_after is not None and self.lists > self.operator_after:
            for key, claim in list(self.objects.items()):
                if "deletionTimestamp" in claim["metadata"]:
                    self._set(key, [f for f in claim["metadata"]["finalizers"] if f != names.CLAIM_FINALIZER])
        return {"items": [dict(c) for c in self.objects.values()]}

    def delete_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, name: str) -> None:
        self.objects[(ns, name)]["metadata"]["deletionTimestamp"] = "now"
        self._set((ns, name), self.objects[(ns, name)]["metadata"]["finalizers"])

    def patch_namespaced_custom_object(
        self, group: str, version: str, ns: str, plural: str, name: str, body: dict[str, Any]
    ) -> None:
        if self.refuse_patch:
            raise ApiException(status=403, reason="Forbidden")
        self.patched.append((ns, name))
        self._set((ns, name), body["metadata"]["finalizers"])

    def _set(self, key: tuple[str, str], finalizers: list[str]) -> None:
        if finalizers:
            self.objects[key]["metadata"]["finalizers"] = finalizers
        else:
            del self.objects[key]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(api: FakeClaims, wait: float) -> tuple[int, list[str]]:
    clock, said = Clock(), list[str]()
    status = script.release_claims(api, wait, clock=clock, sleep=clock.sleep, say=said.append)
    return status, said


F = names.CLAIM_FINALIZER


def test_a_running_operator_releases_every_claim_itself() -> None:
    api = FakeClaims(("a", "train", [F]), ("b", "serve", [F]), operator_after=2)
    assert run(api, 60)[0] == 0
    assert api.objects == {} and api.patched == []


def test_without_an_operator_the_finalizer_is_removed_after_the_wait() -> None:
    api = FakeClaims(("a", "train", [F, "example.com/keep"]), ("b", "serve", [F]), ("c", "other", ["example.com/x"]))
    status, said = run(api, 10)
    assert status == 0
    assert sorted(api.patched) == [("a", "train"), ("b", "serve")]
    # Only flexnpu's finalizer goes: others keep their object until they let it go.
    assert {k: c["metadata"]["finalizers"] for k, c in api.objects.items()} == {
        ("a", "train"): ["example.com/keep"],
        ("c", "other"): ["example.com/x"],
    }
    assert api.lists >= 10 / script.POLL_SECONDS  # it waited for the operator first
    assert any("a/train: not deregistered by the operator" in line for line in said)


def test_no_crd_is_nothing_to_do() -> None:
    api = FakeClaims()
    api.crd = False
    assert run(api, 60) == (0, ["no VNpuClaim CRD: nothing to release"])


def test_a_refused_patch_fails_the_hook() -> None:
    api = FakeClaims(("a", "train", [F]))
    api.refuse_patch = True
    status, said = run(api, 0)
    assert status == 1 and ("a", "train") in api.objects
    assert any("HTTP 403" in line for line in said)
