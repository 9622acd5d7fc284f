"""The kubelet side of the device plugin: every gRPC and registration detail of the v1beta1 API lives here.

Life cycle, as kubelet expects it: serve ``DevicePlugin`` on a unix socket in kubelet's device-plugin directory,
then call ``Registration.Register`` on ``kubelet.sock``. When kubelet restarts it deletes the plugins' sockets
and creates a new ``kubelet.sock``; a watcher notices either within ``watch_interval`` and serves and registers
again. The servicer only translates between protobuf and the plugin (flexnpu.deviceplugin.plugin).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from flexnpu import names
from flexnpu.deviceplugin.core.allocation import AllocationError
from flexnpu.deviceplugin.core.devices import UnitDevice
from flexnpu.deviceplugin.core.response import ContainerAllocation
from flexnpu.deviceplugin.plugin import VnpuPlugin
from flexnpu.errors import ValidationError
from flexnpu.protos import deviceplugin_v1beta1_pb2 as api
from flexnpu.protos import deviceplugin_v1beta1_pb2_grpc as api_grpc

log = logging.getLogger(__name__)
_REGISTER_TIMEOUT = 5.0
_STREAM_POLL = 1.0
MAX_DETAILS_CHARS = 1024
"""A refusal's text is cut here: gRPC drops a status whose details pass its metadata limit (8 KiB by default)."""


class Servicer(api_grpc.DevicePluginServicer):
    """DevicePlugin: decode, delegate to the plugin, encode."""

    def __init__(self, plugin: VnpuPlugin) -> None:
        self.plugin = plugin

    def GetDevicePluginOptions(self, request: api.Empty, context: grpc.ServicerContext) -> api.DevicePluginOptions:
        return plugin_options()

    def ListAndWatch(self, request: api.Empty, context: grpc.ServicerContext) -> Iterator[api.ListAndWatchResponse]:
        context.add_callback(self.plugin.wake)
        version, devices = self.plugin.devices()
        yield list_and_watch_response(devices)
        while context.is_active() and not self.plugin.stopped:
            if self.plugin.wait_for_change(version, _STREAM_POLL) != version:
                version, devices = self.plugin.devices()
                yield list_and_watch_response(devices)

    def GetPreferredAllocation(
        self, request: api.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> api.PreferredAllocationResponse:
        try:
            return api.PreferredAllocationResponse(
                container_responses=[
                    api.ContainerPreferredAllocationResponse(
                        deviceIDs=self.plugin.preferred(
                            list(r.available_deviceIDs), list(r.must_include_deviceIDs), r.allocation_size
                        )
                    )
                    for r in request.container_requests
                ]
            )
        except ValidationError as exc:
            log.warning("GetPreferredAllocation refused: %s", exc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, bounded(str(exc)))

    def Allocate(self, request: api.AllocateRequest, context: grpc.ServicerContext) -> api.AllocateResponse:
        started = time.perf_counter()
        try:
            responses = [
                container_response(self.plugin.allocate(list(r.devices_ids)).response)
                for r in request.container_requests
            ]
        except AllocationError as exc:
            log.warning("Allocate refused: %s", exc)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, bounded(str(exc)))
        finally:
            self.plugin.metrics.allocate_seconds.observe(time.perf_counter() - started)
        return api.AllocateResponse(container_responses=responses)

    def PreStartContainer(
        self, request: api.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> api.PreStartContainerResponse:
        return api.PreStartContainerResponse()


def bounded(details: str) -> str:
    """``details`` cut to MAX_DETAILS_CHARS, saying how much was cut."""
    if len(details) <= MAX_DETAILS_CHARS:
        return details
    return f"{details[:MAX_DETAILS_CHARS]}... ({len(details) - MAX_DETAILS_CHARS} more characters)"


def plugin_options() -> api.DevicePluginOptions:
    return api.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)


def list_and_watch_response(devices: list[UnitDevice]) -> api.ListAndWatchResponse:
    return api.ListAndWatchResponse(devices=[api.Device(ID=d.id, health=d.health.value) for d in devices])


def container_response(allocation: ContainerAllocation) -> api.ContainerAllocateResponse:
    return api.ContainerAllocateResponse(
        envs=allocation.env(),
        mounts=[
            api.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
            for m in allocation.mounts
        ],
        devices=[
            api.DeviceSpec(container_path=d.container_path, host_path=d.host_path, permissions=d.permissions)
            for d in allocation.devices
        ],
        cdi_devices=[api.CDIDevice(name=n) for n in allocation.cdi_devices],
    )


class PluginServer:
    """Serves the plugin to kubelet and keeps it registered across kubelet restarts."""

    def __init__(
        self,
        plugin: VnpuPlugin,
        kubelet_dir: Path,
        socket_name: str = names.PLUGIN_SOCKET_NAME,
        resource_name: str = names.RESOURCE_VNPU,
        watch_interval: float = 0.1,
        workers: int = 8,
    ) -> None:
        self.plugin = plugin
        self.kubelet_dir = kubelet_dir
        self.socket_path = kubelet_dir / socket_name
        self.kubelet_socket = kubelet_dir / names.KUBELET_SOCKET_NAME
        self.resource_name = resource_name
        self.watch_interval = watch_interval
        self.workers = workers
        self.registrations = 0
        self._server: grpc.Server | None = None
        self._registered_with: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._registered = threading.Condition()

    def start(self) -> None:
        """Serve now; register now if kubelet is there, else as soon as it appears."""
        self._serve()
        self._tick()
        self._watcher = threading.Thread(target=self._watch, name="kubelet-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.plugin.stop()
        self._shutdown_server()
        self.socket_path.unlink(missing_ok=True)

    def wait_registered(self, count: int = 1, timeout: float = 5.0) -> bool:
        """True once ``count`` registrations happened (tests, benchmarks)."""
        with self._registered:
            return self._registered.wait_for(lambda: self.registrations >= count, timeout=timeout)

    def _watch(self) -> None:
        while not self._stop.wait(self.watch_interval):
            try:
                self._tick()
            except Exception:  # the watcher must survive anything: it is what keeps kubelet connected
                log.exception("kubelet watcher")

    def _tick(self) -> None:
        if not self.socket_path.exists():
            log.info("plugin socket %s is gone (kubelet restarted?): serving again", self.socket_path)
            self._shutdown_server()
            self._serve()
            self._registered_with = None
        kubelet = _socket_identity(self.kubelet_socket)
        if kubelet is not None and kubelet != self._registered_with:
            self._register(kubelet)

    def _serve(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="dp-grpc"))
        api_grpc.add_DevicePluginServicer_to_server(Servicer(self.plugin), server)
        if server.add_insecure_port(f"unix:{self.socket_path}") == 0:
            raise OSError(f"cannot listen on {self.socket_path}")
        server.start()
        self._server = server
        log.info("serving %s on %s", self.resource_name, self.socket_path)

    def _shutdown_server(self) -> None:
        if self._server is not None:
            self.plugin.wake()
            self._server.stop(grace=None).wait(timeout=5)
            self._server = None

    def _register(self, kubelet: tuple[int, int]) -> None:
        request = api.RegisterRequest(
            version=names.DEVICE_PLUGIN_API_VERSION,
            endpoint=self.socket_path.name,
            resource_name=self.resource_name,
            options=plugin_options(),
        )
        try:
            with grpc.insecure_channel(f"unix:{self.kubelet_socket}") as channel:
                api_grpc.RegistrationStub(channel).Register(request, timeout=_REGISTER_TIMEOUT)
        except grpc.RpcError as exc:
            log.warning("registration with kubelet failed (retrying): %s", _rpc_text(exc))
            return
        self._registered_with = kubelet
        with self._registered:
            self.registrations += 1
            self._registered.notify_all()
        self.plugin.metrics.registrations.inc()
        log.info("registered %s with kubelet at %s", self.resource_name, self.kubelet_socket)


def _socket_identity(path: Path) -> tuple[int, int] | None:
    """(inode, ctime) of kubelet's socket: a new socket after a kubelet restart has a new identity."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns


def _rpc_text(exc: Any) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code else 'error'}: {details}"
