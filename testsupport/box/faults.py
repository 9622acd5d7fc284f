"""Malformed requests to every endpoint of the box, and what they did to the component that received them.

Each endpoint gets a table of bad inputs a buggy client, a fuzzer or a hostile pod could send: bodies that are
not JSON or the wrong JSON, wrong types, out-of-range numbers, unknown ids, oversized or deeply nested bodies.
A request *crashed* its component when the process is gone afterwards or stops answering its health check;
an *unhandled* answer is a 5xx without a JSON body (a traceback page, or nothing). Both should be 0.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from flexnpu import names
from flexnpu.protos import deviceplugin_v1beta1_pb2 as api
from flexnpu.protos import deviceplugin_v1beta1_pb2_grpc as api_grpc
from flexnpu_testsupport.box.cluster import NODE, Box, http_json

DEEP = b"[" * 30_000 + b"]" * 30_000  # 60 KB: under the body limits, past json's recursion limit
BIG = json.dumps({"flexnpu_id": "x" * 200_000}).encode()


@dataclass
class EndpointFaults:
    """What one endpoint made of its malformed requests."""

    endpoint: str
    sent: int = 0
    crashed: int = 0
    unhandled: int = 0
    answers: dict[str, int] = field(default_factory=dict)

    def count(self, answer: str, unhandled: bool = False) -> None:
        self.sent += 1
        self.answers[answer] = self.answers.get(answer, 0) + 1
        self.unhandled += int(unhandled)

    def as_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "sent": self.sent,
            "crashed": self.crashed,
            "unhandled": self.unhandled,
            "answers": dict(sorted(self.answers.items())),
        }


def _http_answer(status: int, body: object) -> tuple[str, bool]:
    unhandled = status == 0 or (status >= 500 and not isinstance(body, dict | list))
    return str(status or "no answer"), unhandled


def _pod(units: object, name: object = "fuzz") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": "00000000-0000-0000-0000-000000000000"},
        "spec": {"containers": [{"name": "c", "resources": {"limits": {names.RESOURCE_VNPU: units}}}]},
    }


def extender_cases() -> list[tuple[str, bytes]]:
    """(verb, raw body) pairs; the verb may be unknown on purpose."""
    bodies: list[object] = [
        None,
        [],
        {},
        5,
        "Pod",
        {"Pod": 5},
        {"Pod": {}},
        {"Pod": None, "NodeNames": [NODE]},
        {"Pod": _pod("3"), "NodeNames": NODE},
        {"Pod": _pod("3"), "NodeNames": [5, None]},
        {"Pod": _pod("3"), "Nodes": {"items": "x"}},
        {"Pod": _pod("-3"), "NodeNames": [NODE]},
        {"Pod": _pod("abc"), "NodeNames": [NODE]},
        {"Pod": _pod("1e99"), "NodeNames": [NODE]},
        {"Pod": _pod("15"), "NodeNames": [NODE]},
        {"Pod": _pod(3, name=["x"]), "NodeNames": [NODE]},
        {"PodName": "nobody", "PodNamespace": "default", "PodUID": "u", "Node": NODE},
        {"PodName": 7, "PodNamespace": None, "Node": ["x"]},
        {"Pod": _pod("3"), "NodeNameToVictims": {NODE: "x"}},
    ]
    raws = [b"", b"not json", b"{", DEEP, b"\xff\xfe"] + [json.dumps(b).encode() for b in bodies]
    return [
        *[(verb, raw) for verb in ("filter", "prioritize", "bind", "preempt") for raw in raws],
        ("no-such-verb", b"{}"),
    ]


def daemon_cases() -> list[tuple[str, str, bytes]]:
    """(method, path, raw body) for flexnpud's registration API."""
    good = {"flexnpu_id": "fuzz", "entity": "fuzz", "npu": 0, "chip": 0, "aicore_alloc": 1, "memory_alloc": 1}
    variants: list[object] = [
        None,
        [],
        {},
        "register",
        {**good, "npu": -1},
        {**good, "npu": 99},
        {**good, "chip": 5},
        {**good, "aicore_alloc": "x"},
        {**good, "aicore_alloc": 1e30},
        {**good, "aicore_alloc": 0},
        {**good, "aicore_alloc": 10_000},
        {**good, "memory_alloc": -5},
        {**good, "memory_alloc": 10**12},
        {**good, "flexnpu_id": ""},
        {**good, "flexnpu_id": None},
        {**good, "priority": "urgent"},
        {**good, "npu": True},
        {k: v for k, v in good.items() if k != "npu"},
    ]
    register = [
        ("POST", "/device/register", raw)
        for raw in [b"", b"not json", b"{", DEEP, BIG, b"\xff"] + [json.dumps(v).encode() for v in variants]
    ]
    return [
        *register,
        ("POST", "/device/unregister", b"{}"),
        ("POST", "/device/unregister", b'{"flexnpu_id": "nobody"}'),
        ("POST", "/device/unregister", b"[1]"),
        ("GET", "/device/register", b""),
        ("DELETE", "/device/flexnpu-info", b""),
        ("GET", "/device/no-such-thing", b""),
        ("POST", "/service/health", b"{}"),
    ]


def send_extender(box: Box) -> EndpointFaults:
    faults = EndpointFaults("extender HTTP (filter/prioritize/bind/preempt)")
    for verb, raw in extender_cases():
        status, body = http_json(f"{box.extender_url}/{verb}", raw=raw, method="POST")
        faults.count(*_http_answer(status, body))
    _check_alive(box, "extender", lambda: http_json(box.extender_url + "/healthz", timeout=3)[0] == 200, faults)
    return faults


def send_daemon(box: Box) -> EndpointFaults:
    faults = EndpointFaults("flexnpud HTTP API")
    for method, path, raw in daemon_cases():
        status, body = http_json(box.daemon_url + path, raw=raw or None, method=method)
        faults.count(*_http_answer(status, body))
    http_json(box.daemon_url + "/device/unregister", {"flexnpu_id": "fuzz"})  # in case a variant was accepted
    _check_alive(box, "flexnpud", lambda: http_json(box.daemon_url + "/service/health", timeout=3)[0] == 200, faults)
    return faults


def grant_lines() -> list[bytes]:
    return [
        b"not json\n",
        b"[]\n",
        b'{"op": "hello"}\n',
        b'{"op": "hello", "id": "nobody"}\n',
        b'{"op": "want"}\n',
        b'{"op": 5, "id": []}\n',
        b"\xff\xfe\n",
        b"{" * 50_000 + b"\n",
        b"x" * 300_000 + b"\n",
        b"\n",
    ]


def send_grant_socket(box: Box) -> EndpointFaults:
    """Garbage on flexnpud's grant socket (what any process in any pod can reach)."""
    faults = EndpointFaults("flexnpud grant socket")
    for line in grant_lines():
        faults.count(_socket_exchange(box.grant_dir / names.SHIM_SOCKET_NAME, line))
    _check_alive(box, "flexnpud", lambda: http_json(box.daemon_url + "/service/health", timeout=3)[0] == 200, faults)
    return faults


def _socket_exchange(path: Path, line: bytes) -> str:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(path))
            sock.sendall(line)
            reply = sock.recv(4096)
    except TimeoutError:
        return "no reply (connection kept)"
    except OSError as exc:
        return f"closed ({type(exc).__name__})"
    if not reply:
        return "closed"
    try:
        message = json.loads(reply.split(b"\n", 1)[0])
    except ValueError:
        return "non-JSON reply"
    return f"{message.get('op', '?')}:{message.get('code') or message.get('error') or ''}"


def device_plugin_cases(valid_id: str) -> list[tuple[str, Any]]:
    """(rpc, request) pairs with bad device ids and sizes."""
    card = valid_id.rsplit("-", 1)[0]
    ids: list[list[str]] = [
        ["nope"],
        [""],
        [f"{card}-999"],
        [f"{card}--1"],
        [],
        [valid_id] * 50,
        ["\u2603" * 300],
        ["npu-ffff-ff-00-0-0"],
        [valid_id, "nope"],
        ["x" * 10_000],
    ]
    cases: list[tuple[str, Any]] = [
        ("Allocate", api.AllocateRequest(container_requests=[api.ContainerAllocateRequest(devices_ids=i)])) for i in ids
    ]
    cases.append(("Allocate", api.AllocateRequest()))
    preferred = [
        ([], [], 5),
        (["nope"], [], 1),
        ([valid_id], ["nope"], 1),
        ([valid_id], [], -1),
        ([valid_id], [], 0),
        ([valid_id], [], 1_000_000),
        ([f"{card}-999"] * 3, [], 3),
        ([valid_id], [valid_id, valid_id], 1),
    ]
    cases += [
        (
            "GetPreferredAllocation",
            api.PreferredAllocationRequest(
                container_requests=[
                    api.ContainerPreferredAllocationRequest(
                        available_deviceIDs=a, must_include_deviceIDs=m, allocation_size=s
                    )
                ]
            ),
        )
        for a, m, s in preferred
    ]
    cases.append(("GetPreferredAllocation", api.PreferredAllocationRequest()))
    cases.append(("PreStartContainer", api.PreStartContainerRequest(devices_ids=["nope"])))
    return cases


def send_device_plugin(box: Box) -> EndpointFaults:
    faults = EndpointFaults("device plugin gRPC (Allocate/GetPreferredAllocation)")
    registrations = len(box.kubelet.registrations)
    valid = box.kubelet.devices[0].ID if box.kubelet.devices else "npu-0000-c1-00-0-0"
    with grpc.insecure_channel(f"unix:{box.kubelet_dir / names.PLUGIN_SOCKET_NAME}") as channel:
        stub = api_grpc.DevicePluginStub(channel)
        for rpc, request in device_plugin_cases(valid):
            faults.count(_grpc_answer(getattr(stub, rpc), request))
    _check_alive(box, "deviceplugin", lambda: _plugin_answers(box), faults)
    if len(box.kubelet.registrations) != registrations:
        faults.crashed += 1  # the plugin restarted itself (it registered again)
    return faults


def _grpc_answer(call: Callable[..., Any], request: Any) -> str:
    try:
        call(request, timeout=5)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        return f"{getattr(code, 'name', 'UNKNOWN')}"
    return "OK"


def _plugin_answers(box: Box) -> bool:
    with grpc.insecure_channel(f"unix:{box.kubelet_dir / names.PLUGIN_SOCKET_NAME}") as channel:
        try:
            api_grpc.DevicePluginStub(channel).GetDevicePluginOptions(api.Empty(), timeout=3)
        except grpc.RpcError:
            return False
    return True


def _check_alive(box: Box, name: str, healthy: Callable[[], bool], faults: EndpointFaults) -> None:
    time.sleep(0.2)  # a crash after the last answer (a dying thread, a late exit) shows up here
    if not box.child(name).alive() or not healthy():
        faults.crashed += 1


def send_all(box: Box) -> list[EndpointFaults]:
    return [send_extender(box), send_daemon(box), send_grant_socket(box), send_device_plugin(box)]


def summary(results: Sequence[EndpointFaults]) -> dict[str, int]:
    return {
        "sent": sum(r.sent for r in results),
        "crashed": sum(r.crashed for r in results),
        "unhandled": sum(r.unhandled for r in results),
    }
