"""The DRA plugin's gRPC servers on two unix sockets: plugin registration (kubelet's plugin watcher finds the
registration socket in ``plugins_registry``) and the DRA v1 service (``v1.DRAPlugin``) on the service socket.

``GetInfo`` answers type ``DRAPlugin``, name ``npu.flexnpu.io``, the service socket as endpoint and
``supported_versions: ["v1.DRAPlugin"]`` (what k8s.io/dynamic-resource-allocation's kubeletplugin sends).
Each claim of a ``NodePrepareResources``/``NodeUnprepareResources`` request is answered on its own: a failure
goes into that claim's ``error`` field (kubelet retries it) and never fails the call or the server.
"""

from __future__ import annotations

import logging
import os
from concurrent import futures
from pathlib import Path

import grpc

from flexnpu import names
from flexnpu.dra.plugin import DraPlugin, PrepareError
from flexnpu.protos import dra_v1_pb2 as dra
from flexnpu.protos import dra_v1_pb2_grpc as dra_grpc
from flexnpu.protos import pluginregistration_v1_pb2 as reg
from flexnpu.protos import pluginregistration_v1_pb2_grpc as reg_grpc

log = logging.getLogger(__name__)
MAX_ERROR = 1024


class RegistrationService(reg_grpc.RegistrationServicer):
    def __init__(self, endpoint: Path) -> None:
        self.endpoint = endpoint
        self.registered: bool | None = None
        self.error = ""

    def GetInfo(self, request: reg.InfoRequest, context: grpc.ServicerContext) -> reg.PluginInfo:
        return reg.PluginInfo(
            type=names.DRA_PLUGIN_TYPE,
            name=names.DRA_DRIVER,
            endpoint=str(self.endpoint),
            supported_versions=[names.DRA_SERVICE],
        )

    def NotifyRegistrationStatus(
        self, request: reg.RegistrationStatus, context: grpc.ServicerContext
    ) -> reg.RegistrationStatusResponse:
        self.registered, self.error = request.plugin_registered, request.error
        if request.plugin_registered:
            log.info("kubelet registered %s", names.DRA_DRIVER)
        else:
            log.error("kubelet refused the registration of %s: %s", names.DRA_DRIVER, request.error)
        return reg.RegistrationStatusResponse()


class DraService(dra_grpc.DRAPluginServicer):
    def __init__(self, plugin: DraPlugin) -> None:
        self.plugin = plugin

    def NodePrepareResources(
        self, request: dra.NodePrepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra.NodePrepareResourcesResponse:
        response = dra.NodePrepareResourcesResponse()
        for claim in request.claims:
            out = response.claims[claim.uid]
            try:
                for answer in self.plugin.prepare(claim.namespace, claim.name, claim.uid):
                    device = out.devices.add(
                        request_names=list(answer.requests),
                        pool_name=answer.pool,
                        device_name=answer.device,
                        cdi_device_ids=list(answer.cdi_ids),
                    )
                    if answer.share_id:
                        device.share_id = answer.share_id
            except Exception as exc:
                out.Clear()
                out.error = _error(exc)
                log.warning("prepare %s/%s (%s): %s", claim.namespace, claim.name, claim.uid, out.error)
        return response

    def NodeUnprepareResources(
        self, request: dra.NodeUnprepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra.NodeUnprepareResourcesResponse:
        response = dra.NodeUnprepareResourcesResponse()
        for claim in request.claims:
            out = response.claims[claim.uid]
            try:
                self.plugin.unprepare(claim.namespace, claim.name, claim.uid)
            except Exception as exc:
                out.error = _error(exc)
                log.warning("unprepare %s/%s (%s): %s", claim.namespace, claim.name, claim.uid, out.error)
        return response


def _error(exc: Exception) -> str:
    text = str(exc) if isinstance(exc, PrepareError) else f"internal error: {type(exc).__name__}: {exc}"
    return text[:MAX_ERROR]


class Servers:
    """Both servers; ``start`` binds the service socket first, so kubelet never finds a registration it cannot use."""

    def __init__(self, plugin: DraPlugin, registration_socket: Path, plugin_socket: Path) -> None:
        self.registration = RegistrationService(plugin_socket)
        self.dra = DraService(plugin)
        self._sockets = (plugin_socket, registration_socket)
        self._servers: list[grpc.Server] = []

    def start(self) -> None:
        plugin_socket, registration_socket = self._sockets
        self._servers = [self._serve(plugin_socket, self._add_dra), self._serve(registration_socket, self._add_reg)]

    def stop(self, grace: float = 1.0) -> None:
        for server in self._servers:
            server.stop(grace).wait()
        for socket in self._sockets:
            socket.unlink(missing_ok=True)
        self._servers = []

    def wait(self) -> None:
        for server in self._servers:
            server.wait_for_termination()

    def _add_dra(self, server: grpc.Server) -> None:
        dra_grpc.add_DRAPluginServicer_to_server(self.dra, server)

    def _add_reg(self, server: grpc.Server) -> None:
        reg_grpc.add_RegistrationServicer_to_server(self.registration, server)

    @staticmethod
    def _serve(socket: Path, add: object) -> grpc.Server:
        socket.parent.mkdir(parents=True, exist_ok=True)
        if socket.exists() or socket.is_symlink():
            os.unlink(socket)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        add(server)  # type: ignore[operator]
        server.add_insecure_port(f"unix://{socket}")
        server.start()
        return server
