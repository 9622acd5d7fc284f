"""The CDI spec of one prepared claim (Container Device Interface 0.6.0, kind ``flexnpu.io/npu``). Pure.

One CDI device per request of the claim, named ``<claim uid>-<request>`` (``/`` -> ``-``), carrying the container
edits the device plugin gives a container today (``flexnpu.containeredits``): the card's device nodes and the
shared Ascend nodes, the driver mounts, ``ASCEND_VISIBLE_DEVICES`` / ``ASCEND_RT_VISIBLE_DEVICES``, the runtime's
and the interposer's mounts and the ``FLEXNPU_*`` variables, with ``FLEXNPU_ID`` the request's registration id.
Every allocation result of a request answers with that request's CDI device id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flexnpu import names
from flexnpu.annotations import CardAssignment
from flexnpu.containeredits import NodeLayout, Workload, container_allocation

from .claims import PreparedClaim, PreparedDevice

CDI_VERSION = "0.6.0"


def cdi_device_name(claim_uid: str, request: str) -> str:
    return f"{claim_uid}-{request.replace('/', '-')}"


def cdi_device_id(claim_uid: str, request: str) -> str:
    """The fully qualified name kubelet hands to the runtime: ``flexnpu.io/npu=<uid>-<request>``."""
    return f"{names.DRA_CDI_KIND}={cdi_device_name(claim_uid, request)}"


def spec_file_name(claim_uid: str) -> str:
    """The spec's file in the CDI directory (one per claim; the runtime reads every ``*.json`` there)."""
    return f"{names.DRA_CDI_KIND.replace('/', '-')}_{claim_uid}.json"


def by_request(claim: PreparedClaim) -> dict[str, list[PreparedDevice]]:
    out: dict[str, list[PreparedDevice]] = {}
    for device in claim.devices:
        out.setdefault(device.request, []).append(device)
    return out


def cdi_spec(claim: PreparedClaim, layout: NodeLayout) -> dict[str, Any]:
    """The spec as a JSON-ready mapping; ``layout.use_cdi`` is ignored (the spec itself lists nodes and mounts)."""
    plain = NodeLayout(**{**vars(layout), "use_cdi": False})
    return {
        "cdiVersion": CDI_VERSION,
        "kind": names.DRA_CDI_KIND,
        "devices": [
            {"name": cdi_device_name(claim.uid, request), "containerEdits": _edits(claim, devices, plain)}
            for request, devices in by_request(claim).items()
        ],
    }


def _edits(claim: PreparedClaim, devices: list[PreparedDevice], layout: NodeLayout) -> Mapping[str, Any]:
    cards = [CardAssignment(d.card_uuid, d.card_index, d.units, d.memory_mib) for d in devices]
    workload = Workload(
        priority=devices[0].priority,
        claim=f"{claim.namespace}/{claim.name}",
        flexnpu_ids=tuple(d.registration_id for d in devices),
    )
    allocation = container_allocation(cards, workload, layout)
    return {
        "env": [f"{k}={v}" for k, v in allocation.envs],
        "deviceNodes": [
            {"path": d.container_path, "hostPath": d.host_path, "permissions": d.permissions}
            for d in allocation.devices
        ],
        "mounts": [
            {
                "hostPath": m.host_path,
                "containerPath": m.container_path,
                "options": ["ro", "nosuid", "nodev", "bind"] if m.read_only else ["rw", "nosuid", "nodev", "bind"],
            }
            for m in allocation.mounts
        ],
    }
