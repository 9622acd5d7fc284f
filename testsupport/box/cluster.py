"""The box itself: start the API emulator, the simulated NPU and the four components, and give them a node.

``Box`` owns a directory (sockets, state, logs, the kubeconfig) and every child process; ``close`` stops them
all, whatever happened. Components are started the way the chart starts them, only with loopback addresses and
files under the box directory: flexnpud with ``devices = sim:910B3x<cards>``, the device plugin with an
inventory file (the simulated cards, as npu-smi would list them), the extender and the operator with the
kubeconfig. The kubelet stub runs in this process (the box is the node's kubelet).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flexnpu import names
from flexnpu.operator.settings import OperatorSettings
from flexnpu_testsupport.box.kube import Api, write_kubeconfig
from flexnpu_testsupport.box.processes import BoxError, Child
from flexnpu_testsupport.kubeletstub import StubKubelet
from flexnpu_testsupport.operatorkit import daemon_pod
from flexnpu_testsupport.waiting import WaitTimeout, free_port, wait_for

NODE = "box-node"
SYSTEM_NAMESPACE = "flexnpu-system"
START_TIMEOUT_S = 45.0
EXTENDER_IDENTITY = "box-extender"


def http_json(
    url: str, body: object = None, *, raw: bytes | None = None, method: str | None = None, timeout: float = 10.0
) -> tuple[int, Any]:
    """(status, decoded body or text) of one HTTP request; status 0 when nothing answered."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method or ("POST" if data is not None else "GET"),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            status, payload = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    except OSError:
        return 0, None
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode(errors="replace")


@dataclass(frozen=True)
class BoxConfig:
    """The node the box simulates."""

    cards: int = 1
    model: str = "910B3"
    units_per_card: int = 10
    oversubscription: int = 2
    node_cache_capable: bool = True


class Box:
    """Every process of the cluster in a box, rooted at ``directory``."""

    def __init__(self, directory: Path, config: BoxConfig = BoxConfig()) -> None:
        self.dir = directory
        self.config = config
        self.python = sys.executable
        self.sockets = _short_dir(directory)  # unix socket paths must stay under 108 bytes
        self.kubelet_dir = self.sockets / "kubelet"
        self.grant_dir = self.sockets / "grant"
        self.simnpu_socket = self.sockets / "simnpu.sock"
        self.runtime_dir = directory / "runtime"
        self.kubeconfig = directory / "kubeconfig"
        self.daemon_port = free_port()
        self.extender_port = free_port()
        self.operator_health_port = free_port()
        self.children: dict[str, Child] = {}
        self.kubelet = StubKubelet(self.kubelet_dir)
        self.api: Api | None = None
        self.plugin_registrations = 0

    # ----- start and stop ---------------------------------------------------------------------------------------

    def start(self) -> Box:
        for path in (self.dir / "logs", self.dir / "state", self.grant_dir, self.kubelet_dir):
            path.mkdir(parents=True, exist_ok=True)
        install_runtime(self.runtime_dir)
        self.api = self._start_apiserver()
        self._seed_api()
        self.kubelet.start()
        self._start_simnpu()
        self.start_component("flexnpud")
        self.start_component("deviceplugin")
        self.start_component("extender")
        self.start_component("operator")
        return self

    def close(self) -> None:
        """Stop everything this box started, the components before the API emulator."""
        for name in reversed(list(self.children)):
            self.children[name].stop()
        self.kubelet.stop()
        if self.sockets != self.dir:
            for path in sorted(self.sockets.rglob("*"), reverse=True):
                _remove(path)
            _remove(self.sockets)

    def __enter__(self) -> Box:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def daemon_url(self) -> str:
        return f"http://127.0.0.1:{self.daemon_port}"

    @property
    def extender_url(self) -> str:
        return f"http://127.0.0.1:{self.extender_port}"

    def child(self, name: str) -> Child:
        return self.children[name]

    # ----- components -------------------------------------------------------------------------------------------

    def start_component(self, name: str) -> Child:
        """Start (or start again) one of flexnpud, deviceplugin, extender, operator and wait until it serves."""
        child = self.children.get(name) or self._new_child(name)
        self.children[name] = child
        registrations = len(self.kubelet.registrations)
        child.start()
        ready = {
            "flexnpud": self._daemon_ready,
            "extender": self._extender_ready,
            "operator": self._operator_ready,
            "deviceplugin": lambda: len(self.kubelet.registrations) > registrations and bool(self.kubelet.devices),
        }[name]
        child.wait_until(ready, START_TIMEOUT_S, "readiness")
        if name == "deviceplugin":
            self.plugin_registrations += 1
            self._publish_node_capacity()
        return child

    def restart_component(self, name: str) -> None:
        """Stop with SIGTERM as Kubernetes does when it replaces a pod, then start again."""
        code = self.children[name].stop()
        if code not in (0, -15):
            raise BoxError(f"{name} exited with {code} on SIGTERM: {self.children[name].tail()}")
        self.start_component(name)

    def _new_child(self, name: str) -> Child:
        log = self.dir / "logs" / f"{name}.log"
        cli = [self.python, "-m", "flexnpu.cli"]
        if name == "flexnpud":
            return Child(name, [*cli, "daemon", "--config", str(self._daemon_config())], log)
        if name == "deviceplugin":
            env = {
                **os.environ,
                "FLEXNPU_DEVICEPLUGIN_SHIM_SOCKET_DIR": str(self.grant_dir),
                "FLEXNPU_DEVICEPLUGIN_SHIM_RUNTIME_DIR": str(self.runtime_dir),
                "FLEXNPU_DEVICEPLUGIN_PYTHON_PATH": "true",  # the box's containers run the Python client
                "FLEXNPU_DEVICEPLUGIN_PRELOAD_HOST_FILE": str(self.dir / "ld.so.preload"),
            }
            return Child(
                name,
                [
                    *cli,
                    "deviceplugin",
                    "--kubelet-dir",
                    str(self.kubelet_dir),
                    "--node-name",
                    NODE,
                    "--inventory",
                    str(self._inventory()),
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--units-per-card",
                    str(self.config.units_per_card),
                    "--oversubscription",
                    str(self.config.oversubscription),
                    "--scan-interval",
                    "1",
                    "--metrics-port",
                    "0",
                    "--daemon-url",
                    self.daemon_url,
                    "--log-level",
                    "warning",
                ],
                log,
                env,
            )
        if name == "extender":
            return Child(
                name,
                [
                    *cli,
                    "extender",
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--listen",
                    f"127.0.0.1:{self.extender_port}",
                    "--identity",
                    EXTENDER_IDENTITY,
                    "--namespace",
                    SYSTEM_NAMESPACE,
                    "--node-cache-capable",
                    str(self.config.node_cache_capable).lower(),
                    "--units-per-card",
                    str(self.config.units_per_card),
                    "--log-level",
                    "WARNING",
                ],
                log,
            )
        if name == "operator":
            env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
            return Child(
                name,
                [
                    *cli,
                    "operator",
                    "--standalone",
                    "--all-namespaces",
                    "--quiet",
                    "--metrics-port",
                    "0",
                    "--resync-interval",
                    "2",
                    "--liveness",
                    f"http://127.0.0.1:{self.operator_health_port}/healthz",
                ],
                log,
                env,
            )
        raise BoxError(f"no component {name!r}")

    def _daemon_config(self) -> Path:
        path = self.dir / "flexnpud.conf"
        path.write_text(
            f"[server]\nhost = 127.0.0.1\nport = {self.daemon_port}\n[logger]\nlog_level = WARNING\n"
            f"[flexnpu]\ndevices = sim:{self.config.model}x{self.config.cards}\n"
            f"persistent_file_dir = {self.dir / 'state'}\nsocket_dir = {self.grant_dir}\n"
            f"oversubscription = {self.config.oversubscription}\n"
            f"[ticker]\nquota = {self.config.units_per_card}\n",
            encoding="utf-8",
        )
        return path

    def _inventory(self) -> Path:
        """The simulated cards as the device plugin's inventory file (index, model, bus id, health)."""
        path = self.dir / "inventory.yaml"
        cards = [
            {"index": i, "model": self.config.model, "bus_id": f"0000:{0xC1 + i:02X}:00.0", "health": "Healthy"}
            for i in range(self.config.cards)
        ]
        path.write_text(yaml.safe_dump({"cards": cards}), encoding="utf-8")
        return path

    def _daemon_ready(self) -> bool:
        return http_json(self.daemon_url + "/service/health", timeout=2)[0] == 200

    def _extender_ready(self) -> bool:
        return http_json(self.extender_url + "/readyz", timeout=2)[0] == 200

    def _operator_ready(self) -> bool:
        return http_json(f"http://127.0.0.1:{self.operator_health_port}/healthz", timeout=2)[0] == 200

    # ----- the API emulator, the node and the simulated NPU -----------------------------------------------------

    def _start_apiserver(self) -> Api:
        url_file = self.dir / "apiserver.url"
        command = [self.python, "-m", "flexnpu_testsupport.box.apiserver", "--url-file", str(url_file)]
        child = Child("apiserver", command, self.dir / "logs" / "apiserver.log")
        self.children["apiserver"] = child
        child.start().wait_until(url_file.exists, START_TIMEOUT_S, "URL")
        url = url_file.read_text(encoding="utf-8")
        write_kubeconfig(self.kubeconfig, url)
        return Api(url)

    def _seed_api(self) -> None:
        """What exists before flexnpu: the node and the node DaemonSet's flexnpud pod (kmock needs no namespace
        objects: a POST to /api/v1/namespaces is read as a namespaced path and refused)."""
        api = self.require_api()
        api.create(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "allocatable": {"cpu": "16", "memory": "128Gi"},
                },
            }
        )
        api.create(daemon_pod(NODE, self.daemon_port, OperatorSettings(), namespace=SYSTEM_NAMESPACE))

    def _publish_node_capacity(self) -> None:
        """As kubelet does: the healthy device IDs the plugin lists become the node's huawei.com/vnpu."""
        healthy = sum(1 for d in self.kubelet.devices if d.health == "Healthy")
        status = {
            "capacity": {names.RESOURCE_VNPU: str(healthy)},
            "allocatable": {"cpu": "16", "memory": "128Gi", names.RESOURCE_VNPU: str(healthy)},
        }
        self.require_api().merge_patch(f"/api/v1/nodes/{NODE}/status", {"status": status})

    def _start_simnpu(self) -> None:
        child = Child(
            "simnpu",
            [
                self.python,
                "-m",
                "flexnpu.cli",
                "simnpu",
                "--socket",
                str(self.simnpu_socket),
                "--model",
                self.config.model,
                "--cards",
                str(self.config.cards),
            ],
            self.dir / "logs" / "simnpu.log",
        )
        self.children["simnpu"] = child
        child.start().wait_until(self.simnpu_socket.exists, START_TIMEOUT_S, "socket")

    def require_api(self) -> Api:
        if self.api is None:
            raise BoxError("the API emulator is not started")
        return self.api

    def wait_for(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        try:
            wait_for(what, condition, timeout, interval=0.05)
        except WaitTimeout as exc:
            raise BoxError(f"no {what} within {timeout:.0f} s") from exc


def install_runtime(target: Path) -> None:
    """The node DaemonSet's init container: copy the in-pod runtime to the host directory Allocate mounts."""
    import flexnpu

    installer = Path(flexnpu.__file__).resolve().parents[1] / "deploy" / "image" / "install_runtime.py"
    if not installer.is_file():
        raise BoxError(f"the runtime installer {installer} is missing (the box runs from a source checkout)")
    done = subprocess.run(
        [sys.executable, str(installer), str(target)], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise BoxError(f"installing the runtime failed: {done.stderr.strip() or done.stdout.strip()}")


def _short_dir(directory: Path) -> Path:
    """A short directory for unix sockets when ``directory`` is too deep for them (AF_UNIX paths <= 107 bytes)."""
    if len(str(directory)) < 60:
        return directory
    import tempfile

    return Path(tempfile.mkdtemp(prefix="flexnpu-box-"))


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
    except OSError:
        pass
