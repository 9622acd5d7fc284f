"""The box's API server: kmock's Kubernetes emulator served on a loopback port, in a process of its own.

``python -m flexnpu_testsupport.box.apiserver --url-file FILE`` declares every resource the components use (namespaces,
events, nodes, pods with their binding and status subresources, leases, CRDs, VNpuClaims with status), serves
``pods/binding`` the way the API server does (the Binding sets the pod's ``spec.nodeName``), writes its URL to
FILE once it listens, and runs until SIGTERM. It uses the operator's emulator, which adds what kopf relies on
(resourceVersion bumps, uid, generation and creationTimestamp on create).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flexnpu import names

VERBS = frozenset({"get", "list", "watch", "create", "update", "patch", "delete"})
BINDING_PATH = re.compile(r"^/api/v1/namespaces/[^/]+/pods/[^/]+/binding$")


def declare_resources(emulator: Any) -> None:
    """Every resource the extender, the operator (and kopf) and the device plugin use."""
    import kmock

    def info(kind: str, namespaced: bool, singular: str, **extra: Any) -> Any:
        return kmock.ResourceInfo(kind=kind, namespaced=namespaced, singular=singular, verbs=set(VERBS), **extra)

    emulator.resources["v1/namespaces"] = info("Namespace", False, "namespace")
    emulator.resources["v1/events"] = info("Event", True, "event")
    emulator.resources["v1/nodes"] = info("Node", False, "node", subresources={"status"})
    emulator.resources["v1/pods"] = info("Pod", True, "pod", subresources={"binding", "status"})
    emulator.resources["coordination.k8s.io/v1/leases"] = info("Lease", True, "lease")
    emulator.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = info(
        "CustomResourceDefinition", False, "customresourcedefinition"
    )
    emulator.resources[f"{names.CRD_GROUP}/{names.CRD_VERSION}/{names.CRD_PLURAL}"] = info(
        names.CRD_KIND, True, names.CRD_SINGULAR, shortnames={names.CRD_SHORT_NAME}, subresources={"status"}
    )


def serve_bindings(emulator: Any) -> None:
    """POST pods/NAME/binding sets the pod's nodeName and merges the Binding's annotations into the pod's, as the
    API server does (kmock knows no subresources)."""

    def bind(request: Any) -> dict[str, Any]:
        target = request.data["target"]["name"]
        version = str(next(emulator._version))  # a real API server bumps it, and watchers compare it
        notes = (request.data.get("metadata") or {}).get("annotations") or {}
        emulator.objects["v1/pods", request.namespace, request.name].patch(
            {"metadata": {"resourceVersion": version, "annotations": notes}, "spec": {"nodeName": target}}
        )
        return {"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 201}

    emulator["post", BINDING_PATH] << bind


async def serve(url_file: Path) -> None:
    import kmock

    from flexnpu_testsupport.operatorkit import emulator_class

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with emulator_class()() as emulator, kmock.Server(emulator) as server:
        declare_resources(emulator)
        serve_bindings(emulator)
        tmp = url_file.with_suffix(".tmp")
        tmp.write_text(str(server.url).rstrip("/"), encoding="utf-8")
        os.replace(tmp, url_file)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flexnpu_testsupport.box.apiserver",
        description="kmock's Kubernetes emulator for the cluster in a box",
    )
    parser.add_argument("--url-file", type=Path, required=True, help="where to write the URL once serving")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.url_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
