"""RBAC: each component gets exactly the rules its code needs, and no rule uses a wildcard."""

from __future__ import annotations

import pytest
from chart_support import Manifest, find, only

ROLE_KINDS = ("Role", "ClusterRole")
Grant = tuple[str, str, str]  # (api group, resource, verb)

EXPECTED: dict[tuple[str, str], set[Grant]] = {
    ("ClusterRole", "node"): {
        ("", "pods", "get"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "pods", "patch"),
        ("", "nodes", "get"),
        ("", "nodes", "patch"),
        ("", "events", "create"),
        ("", "events", "patch"),
        ("flexnpu.io", "vnpuclaims", "list"),  # the registration id of the pod's claim, for FLEXNPU_ID
        ("flexnpu.io", "vnpuclaims", "watch"),  # the same, from a watch of the node's claims
    },
    ("ClusterRole", "extender"): {
        ("", "nodes", "get"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("", "pods", "get"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "pods", "patch"),
        ("", "pods/binding", "create"),
        ("", "pods/finalizers", "update"),  # blockOwnerDeletion on the claims it creates
        ("", "events", "create"),
        ("", "events", "patch"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
        ("flexnpu.io", "vnpuclaims", "get"),
        ("flexnpu.io", "vnpuclaims", "list"),
        ("flexnpu.io", "vnpuclaims", "watch"),
        ("flexnpu.io", "vnpuclaims", "create"),
    },
    ("Role", "extender"): {
        ("coordination.k8s.io", "leases", v) for v in ("get", "list", "watch", "create", "update", "patch")
    },
    ("ClusterRole", "operator"): {
        *{("flexnpu.io", "vnpuclaims", v) for v in ("get", "list", "watch", "patch", "update")},
        *{("flexnpu.io", "vnpuclaims/status", v) for v in ("get", "patch", "update")},
        ("flexnpu.io", "vnpuclaims/finalizers", "update"),
        ("", "pods", "get"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "nodes", "get"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("", "events", "create"),
        ("", "events", "patch"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    },
    # The Helm hook releasing claims before uninstall (templates/release-claims-hook.yaml).
    ("ClusterRole", "release-claims"): {("flexnpu.io", "vnpuclaims", v) for v in ("list", "delete", "patch")},
    ("Role", "scheduler"): {
        ("coordination.k8s.io", "leases", v) for v in ("get", "list", "watch", "create", "update", "patch")
    },
}


def grants(role: Manifest) -> set[Grant]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def component(manifest: Manifest) -> str:
    return str(manifest["metadata"]["labels"]["app.kubernetes.io/component"])


@pytest.mark.parametrize("manifests_name", ["default_manifests", "custom_manifests"])
def test_no_wildcards(manifests_name: str, request: pytest.FixtureRequest) -> None:
    manifests: list[Manifest] = request.getfixturevalue(manifests_name)
    roles = [m for m in manifests if m["kind"] in ROLE_KINDS]
    assert roles
    for role in roles:
        for group, resource, verb in grants(role):
            assert "*" not in (group, resource, verb), role["metadata"]["name"]


def test_each_component_gets_exactly_its_rules(default_manifests: list[Manifest]) -> None:
    actual = {(m["kind"], component(m)): grants(m) for m in default_manifests if m["kind"] in ROLE_KINDS}
    assert actual == EXPECTED


def test_nobody_reads_secrets(default_manifests: list[Manifest]) -> None:
    # The daemon token reaches the operator and the daemons as a mounted file, never through the API.
    for role in (m for m in default_manifests if m["kind"] in ROLE_KINDS):
        assert not any(resource == "secrets" for _, resource, _ in grants(role))


@pytest.mark.parametrize("manifests_name", ["default_manifests", "custom_manifests"])
def test_every_workload_runs_as_its_own_bound_account(manifests_name: str, request: pytest.FixtureRequest) -> None:
    manifests: list[Manifest] = request.getfixturevalue(manifests_name)
    accounts = {m["metadata"]["name"] for m in find(manifests, "ServiceAccount")}
    bound = {s["name"] for m in manifests if m["kind"] in ("RoleBinding", "ClusterRoleBinding") for s in m["subjects"]}
    workloads = [m for m in manifests if m["kind"] in ("Deployment", "DaemonSet")]
    used = [w["spec"]["template"]["spec"]["serviceAccountName"] for w in workloads]
    assert len(set(used)) == len(workloads)
    assert set(used) <= accounts & bound


def test_bindings_point_at_rendered_roles(default_manifests: list[Manifest]) -> None:
    rendered = {(m["kind"], m["metadata"]["name"]) for m in default_manifests if m["kind"] in ROLE_KINDS}
    built_in = {
        ("ClusterRole", "system:kube-scheduler"),
        ("ClusterRole", "system:volume-scheduler"),
        ("Role", "extension-apiserver-authentication-reader"),
    }
    for binding in (m for m in default_manifests if m["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        ref = (binding["roleRef"]["kind"], binding["roleRef"]["name"])
        assert ref in rendered | built_in, binding["metadata"]["name"]
    assert only(default_manifests, "ClusterRole", "node")
