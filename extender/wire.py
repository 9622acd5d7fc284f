"""The JSON of k8s.io/kube-scheduler extender/v1, as kube-scheduler sends and expects it.

The Go types carry no json tags, so the keys are the Go field names (``Pod``, ``NodeNames``, ``FailedNodes``...).
This module holds the payload TypedDicts and small readers that check a decoded body's shape; a reader raises a
:class:`ExtenderPayloadError` naming the key, which the HTTP adapter turns into a JSON ``Error``. Nothing here does I/O.

Upstream: staging/src/k8s.io/kube-scheduler/extender/v1/types.go (ExtenderArgs, ExtenderFilterResult,
HostPriority, ExtenderBindingArgs, ExtenderBindingResult, ExtenderPreemptionArgs/Result, Victims, MetaVictims).
"""

from __future__ import annotations

import json
import reprlib
import string
from collections.abc import Mapping
from typing import Any, Final, NotRequired, TypedDict

from flexnpu.errors import ValidationError

MIN_SCORE: Final = 0
MAX_SCORE: Final = 10
# Characters of node names that JSON needs no escape for (all that Kubernetes allows in a node name).
_PLAIN_BYTES: Final = (string.ascii_letters + string.digits + "._:-").encode("ascii")


def _plain(text: str) -> bool:
    """Whether ``text`` has only those characters (bytes.translate in C: a third of a regex's time)."""
    try:
        return not text.encode("ascii").translate(None, _PLAIN_BYTES)
    except UnicodeEncodeError:
        return False


# A Kubernetes object (v1.Pod, v1.Node) as JSON: the extender reads only a few fields of it.
KubeObject = Mapping[str, Any]


class NodeListPayload(TypedDict):
    items: list[dict[str, Any]]
    apiVersion: NotRequired[str]
    kind: NotRequired[str]
    metadata: NotRequired[dict[str, Any]]


class ExtenderArgs(TypedDict):
    """Body of ``filter`` and ``prioritize``: ``Nodes`` when nodeCacheCapable is false, else ``NodeNames``."""

    Pod: dict[str, Any]
    Nodes: NodeListPayload | None
    NodeNames: list[str] | None


class ExtenderFilterResult(TypedDict):
    Nodes: NodeListPayload | None
    NodeNames: list[str] | None
    FailedNodes: dict[str, str]
    FailedAndUnresolvableNodes: dict[str, str]
    Error: str


class HostPriority(TypedDict):
    Host: str
    Score: int


HostPriorityList = list[HostPriority]


class ExtenderBindingArgs(TypedDict):
    PodName: str
    PodNamespace: str
    PodUID: str
    Node: str


class ExtenderBindingResult(TypedDict):
    Error: str


class MetaPod(TypedDict):
    UID: str


class MetaVictims(TypedDict):
    Pods: list[MetaPod]
    NumPDBViolations: int


class Victims(TypedDict):
    Pods: list[dict[str, Any]]
    NumPDBViolations: int


class ExtenderPreemptionArgs(TypedDict):
    """``NodeNameToMetaVictims`` when nodeCacheCapable is true, else ``NodeNameToVictims`` (full pods)."""

    Pod: dict[str, Any]
    NodeNameToVictims: NotRequired[dict[str, Victims] | None]
    NodeNameToMetaVictims: NotRequired[dict[str, MetaVictims] | None]


class ExtenderPreemptionResult(TypedDict):
    NodeNameToMetaVictims: dict[str, MetaVictims]


class ErrorBody(TypedDict):
    """What a malformed request gets back (kube-scheduler reads ``Error`` of filter and bind results)."""

    Error: str


class ExtenderPayloadError(ValidationError):
    """A request body does not have the shape of the extender/v1 payload it claims to be."""


# ----------------------------------------------------------------------------------------------------------------
# Readers: a decoded JSON body in, the same body typed (and checked) out.


def read_extender_args(body: object) -> ExtenderArgs:
    args = _object(body, "ExtenderArgs")
    pod = _object(args.get("Pod"), "Pod")
    names = _optional_names(args.get("NodeNames"), "NodeNames")
    nodes = _optional_node_list(args.get("Nodes"))
    if names is None and nodes is None:
        raise ExtenderPayloadError("NodeNames", None, "one of Nodes (nodeCacheCapable: false) or NodeNames must be set")
    return {"Pod": dict(pod), "Nodes": nodes, "NodeNames": names}


def read_binding_args(body: object) -> ExtenderBindingArgs:
    args = _object(body, "ExtenderBindingArgs")
    return {
        "PodName": _text(args, "PodName"),
        "PodNamespace": _text(args, "PodNamespace"),
        "PodUID": _text(args, "PodUID", allow_empty=True),
        "Node": _text(args, "Node"),
    }


def read_preemption_args(body: object) -> ExtenderPreemptionArgs:
    args = _object(body, "ExtenderPreemptionArgs")
    pod = _object(args.get("Pod"), "Pod")
    out: ExtenderPreemptionArgs = {"Pod": dict(pod)}
    meta = args.get("NodeNameToMetaVictims")
    if meta is not None:
        out["NodeNameToMetaVictims"] = {
            node: _meta_victims(v, node) for node, v in _object(meta, "NodeNameToMetaVictims").items()
        }
    full = args.get("NodeNameToVictims")
    if full is not None:
        out["NodeNameToVictims"] = {node: _victims(v, node) for node, v in _object(full, "NodeNameToVictims").items()}
    return out


def node_names_of(args: ExtenderArgs) -> list[str]:
    """The candidate node names, whichever of the two forms the request used."""
    if args["NodeNames"] is not None:
        return args["NodeNames"]
    nodes = args["Nodes"]
    assert nodes is not None  # read_extender_args guarantees one of the two
    return [_node_name(item, i) for i, item in enumerate(nodes["items"])]


def victim_uids(args: ExtenderPreemptionArgs) -> dict[str, list[str]]:
    """Per node, the UIDs of the pods kube-scheduler already proposes to evict (either form)."""
    meta = args.get("NodeNameToMetaVictims")
    if meta is not None:
        return {node: [p["UID"] for p in v["Pods"]] for node, v in meta.items()}
    full = args.get("NodeNameToVictims") or {}
    return {node: [str(p.get("metadata", {}).get("uid", "")) for p in v["Pods"]] for node, v in full.items()}


def pdb_violations(args: ExtenderPreemptionArgs) -> dict[str, int]:
    meta = args.get("NodeNameToMetaVictims")
    if meta is not None:
        return {node: v["NumPDBViolations"] for node, v in meta.items()}
    return {node: v["NumPDBViolations"] for node, v in (args.get("NodeNameToVictims") or {}).items()}


# ----------------------------------------------------------------------------------------------------------------
# Builders.


def filter_result(
    args: ExtenderArgs, fits: list[str], failed: dict[str, str], unresolvable: dict[str, str]
) -> ExtenderFilterResult:
    """Answer in the form the request used: names for names, the node objects for a NodeList."""
    nodes = args["Nodes"]
    if args["NodeNames"] is not None or nodes is None:
        return {
            "Nodes": None,
            "NodeNames": fits,
            "FailedNodes": failed,
            "FailedAndUnresolvableNodes": unresolvable,
            "Error": "",
        }
    keep = set(fits)
    items = [item for item in nodes["items"] if item.get("metadata", {}).get("name") in keep]
    return {
        "Nodes": {**nodes, "items": items},
        "NodeNames": None,
        "FailedNodes": failed,
        "FailedAndUnresolvableNodes": unresolvable,
        "Error": "",
    }


def encode_score_groups(groups: list[tuple[int, list[str]]]) -> str:
    """The JSON of a HostPriorityList given as ``[(score, hosts), ...]``: one C-level join per score."""
    if not all(_plain("".join(hosts)) for _, hosts in groups):
        return json.dumps([{"Host": h, "Score": s} for s, hosts in groups for h in hosts], separators=(",", ":"))
    parts = [
        '{"Host":"' + f'","Score":{int(score)}}},{{"Host":"'.join(hosts) + f'","Score":{int(score)}}}'
        for score, hosts in groups
        if hosts
    ]
    return "[" + ",".join(parts) + "]"


def encode_filter_result(result: ExtenderFilterResult) -> str:
    """The JSON of a filter answer; a long NodeNames list of plain names is joined in C, not walked by json."""
    names = result["NodeNames"]
    if not names or not _plain("".join(names)):
        return json.dumps(result, separators=(",", ":"))
    # NodeNames precedes the string-valued maps, and a quote inside a JSON string is escaped: the first match is it.
    rest = json.dumps({**result, "NodeNames": None}, separators=(",", ":"))
    return rest.replace('"NodeNames":null', '"NodeNames":["' + '","'.join(names) + '"]', 1)


def filter_error(message: str) -> ExtenderFilterResult:
    return {"Nodes": None, "NodeNames": None, "FailedNodes": {}, "FailedAndUnresolvableNodes": {}, "Error": message}


def meta_victims(uids: list[str], pdb_violations: int = 0) -> MetaVictims:
    return {"Pods": [{"UID": uid} for uid in uids], "NumPDBViolations": pdb_violations}


# ----------------------------------------------------------------------------------------------------------------


def _object(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ExtenderPayloadError(field, _short(value), "must be a JSON object")
    return value


def _text(body: Mapping[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = body.get(key, "" if allow_empty else None)
    if not isinstance(value, str) or (not value and not allow_empty):
        reason = "must be a non-empty string" if not allow_empty else "must be a string"
        raise ExtenderPayloadError(key, _short(value), reason)
    return value


def _optional_names(value: object, field: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        try:
            "".join(value)  # a TypeError names a non-string; in C, four times faster than checking types
        except TypeError:
            pass
        else:
            return value
    raise ExtenderPayloadError(field, _short(value), "must be a JSON list of node names")


def _optional_node_list(value: object) -> NodeListPayload | None:
    if value is None:
        return None
    nodes = _object(value, "Nodes")
    items = nodes.get("items") or []
    if not isinstance(items, list):
        raise ExtenderPayloadError("Nodes.items", _short(items), "must be a JSON list of v1.Node")
    for i, item in enumerate(items):
        _node_name(item, i)
    out: NodeListPayload = {"items": items}
    for extra in ("apiVersion", "kind", "metadata"):
        if extra in nodes:
            out[extra] = nodes[extra]
    return out


def _node_name(item: object, i: int) -> str:
    meta = _object(_object(item, f"Nodes.items[{i}]").get("metadata"), f"Nodes.items[{i}].metadata")
    annotations = meta.get("annotations")
    if annotations is not None:
        _object(annotations, f"Nodes.items[{i}].metadata.annotations")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ExtenderPayloadError(f"Nodes.items[{i}].metadata.name", _short(name), "must be a non-empty string")
    return name


def _meta_victims(value: object, node: str) -> MetaVictims:
    body = _object(value, f"NodeNameToMetaVictims[{node}]")
    pods = body.get("Pods") or []
    if not isinstance(pods, list):
        raise ExtenderPayloadError(f"NodeNameToMetaVictims[{node}].Pods", _short(pods), "must be a JSON list")
    uids = [_text(_object(p, f"NodeNameToMetaVictims[{node}].Pods[]"), "UID") for p in pods]
    return meta_victims(uids, _count(body, node))


def _victims(value: object, node: str) -> Victims:
    body = _object(value, f"NodeNameToVictims[{node}]")
    pods = body.get("Pods") or []
    if not isinstance(pods, list):
        raise ExtenderPayloadError(f"NodeNameToVictims[{node}].Pods", _short(pods), "must be a JSON list")
    return {
        "Pods": [dict(_object(p, f"NodeNameToVictims[{node}].Pods[]")) for p in pods],
        "NumPDBViolations": _count(body, node),
    }


def _count(body: Mapping[str, Any], node: str) -> int:
    value = body.get("NumPDBViolations", 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExtenderPayloadError(f"{node}.NumPDBViolations", _short(value), "must be an integer")
    return value


def _short(value: object) -> object:
    """The value itself when short, else a bounded repr (bounded in depth too: the value may nest deeply)."""
    text = reprlib.repr(value)
    if len(text) > 80:
        return text[:77] + "..."
    return value if isinstance(value, (str, int, float, bool)) or value is None else text
