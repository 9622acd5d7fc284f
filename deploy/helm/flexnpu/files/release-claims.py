"""Helm hook of the flexnpu chart: no VNpuClaim outlives the operator still holding its finalizer.

Every VNpuClaim carries the operator's finalizer ``flexnpu.io/deregister`` until the operator has deregistered it
from its node's flexnpud. Once the operator is gone (``helm uninstall``, or an upgrade to mode dra, which has no
operator), nothing removes that finalizer: the claims never go, and deleting their namespace hangs. So, run by
Helm as a pre-delete hook (and pre-upgrade in mode dra), while the operator and the daemons still run:

1. delete every VNpuClaim in the cluster (the pods they serve lose their share as flexnpu leaves anyway);
2. wait up to ``--wait-seconds`` for the operator to deregister them and remove its finalizer (0 in mode dra);
3. remove ``flexnpu.io/deregister`` from the claims still there, keeping any other finalizer.

No VNpuClaim CRD (a dra install, or already removed) is nothing to do. Exit status 0 when no claim of ours is
left holding the finalizer, 1 otherwise (Helm then reports the hook as failed and stops). Credentials: the hook's
service account through flexnpu.kubeclient (KUBECONFIG and ~/.kube/config work too, for a run by hand).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

FINALIZER = "flexnpu.io/deregister"
GROUP, VERSION, PLURAL = "flexnpu.io", "v1alpha1", "vnpuclaims"
POLL_SECONDS = 2.0


def kept_finalizers(claim: dict[str, Any]) -> list[str] | None:
    """The finalizers a claim keeps once ours is removed; None when ours is not on it."""
    metadata = claim.get("metadata") if isinstance(claim.get("metadata"), dict) else {}
    finalizers = metadata.get("finalizers") if isinstance(metadata.get("finalizers"), list) else []
    if FINALIZER not in finalizers:
        return None
    return [f for f in finalizers if f != FINALIZER]


def _where(claim: dict[str, Any]) -> tuple[str, str]:
    metadata = claim.get("metadata") or {}
    return str(metadata.get("namespace", "")), str(metadata.get("name", ""))


def release_claims(
    api: Any,
    wait_seconds: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = print,
) -> int:
    """Steps 1-3 through ``api`` (a kubernetes.client.CustomObjectsApi); the exit status."""
    from kubernetes.client.exceptions import ApiException

    def claims() -> list[dict[str, Any]] | None:
        try:
            return list(api.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"])
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    found = claims()
    if found is None:
        say("no VNpuClaim CRD: nothing to release")
        return 0
    for claim in found:
        namespace, name = _where(claim)
        try:
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
    say(f"deleted {len(found)} VNpuClaim(s); waiting up to {wait_seconds:g} s for the operator to deregister them")
    deadline = clock() + wait_seconds
    left = claims() or []
    while left and clock() < deadline:
        sleep(POLL_SECONDS)
        left = claims() or []
    stuck = 0
    for claim in left:
        keep = kept_finalizers(claim)
        if keep is None:
            continue
        namespace, name = _where(claim)
        try:
            api.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"finalizers": keep}}
            )
            say(f"{namespace}/{name}: not deregistered by the operator; finalizer {FINALIZER} removed")
        except ApiException as exc:
            if exc.status != 404:
                say(f"{namespace}/{name}: finalizer {FINALIZER} not removed: HTTP {exc.status} {exc.reason}")
                stuck += 1
    return 1 if stuck else 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait-seconds", type=float, default=60.0, help="how long the operator gets (default 60)")
    args = parser.parse_args(argv)
    import kubernetes.client

    from flexnpu.kubeclient import load_configuration

    with kubernetes.client.ApiClient(load_configuration()) as client:
        return release_claims(kubernetes.client.CustomObjectsApi(client), args.wait_seconds)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
