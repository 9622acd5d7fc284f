"""A stand-in for kubelet's device manager, speaking the real v1beta1 protocol (tests and benchmarks).

It serves ``Registration`` on ``kubelet.sock`` in a directory, and on each registration dials the plugin's
socket, reads its options and follows ListAndWatch, as kubelet does. ``allocate_units`` walks kubelet's
admission path for one container: free healthy IDs, GetPreferredAllocation, then Allocate; ``admit`` and
``admit_pods`` walk it as the real kubelet does for whole pods (creation order, init containers and reuse).
``restart`` does what a kubelet restart does to the directory: its server goes away, every socket in the
directory is deleted, a new ``kubelet.sock`` appears.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from flexnpu import names
from flexnpu.protos import deviceplugin_v1beta1_pb2 as api
from flexnpu.protos import deviceplugin_v1beta1_pb2_grpc as api_grpc


class _Registration(api_grpc.RegistrationServicer):
    def __init__(self, kubelet: StubKubelet) -> None:
        self.kubelet = kubelet

    def Register(self, request: api.RegisterRequest, context: grpc.ServicerContext) -> api.Empty:
        self.kubelet._registered(request)
        return api.Empty()


class StubKubelet:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket_path = directory / names.KUBELET_SOCKET_NAME
        self.registrations: list[tuple[float, api.RegisterRequest]] = []
        self.options: api.DevicePluginOptions | None = None
        self.updates: list[list[api.Device]] = []
        self.allocated: set[str] = set()
        self._updates_by_registration: dict[int, list[list[api.Device]]] = {}
        self._dials: list[threading.Thread] = []
        self._server: grpc.Server | None = None
        self._channel: grpc.Channel | None = None
        self._stub: api_grpc.DevicePluginStub | None = None
        self._watch: threading.Thread | None = None
        self._state = threading.Condition()

    # -- life cycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="kubelet-stub"))
        api_grpc.add_RegistrationServicer_to_server(_Registration(self), server)
        server.add_insecure_port(f"unix:{self.socket_path}")
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(timeout=5)
            self._server = None
        for dial in self._dials:
            dial.join(timeout=10)
        self._dials.clear()
        self._disconnect()

    def restart(self) -> float:
        """Restart as kubelet does (sockets deleted, a new kubelet.sock); returns the moment it is back."""
        self.stop()
        for path in self.directory.iterdir():
            if path.is_socket():
                path.unlink()
        self.start()
        return time.monotonic()

    def __enter__(self) -> StubKubelet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the plugin told us -------------------------------------------------------------------------

    def wait_for_registration(self, count: int = 1, timeout: float = 10.0) -> api.RegisterRequest:
        self._wait(
            lambda: len(self.registrations) >= count and self.updates_since(count) > 0,
            timeout,
            f"registration #{count} with a device list",
        )
        return self.registrations[count - 1][1]

    def updates_since(self, registration: int) -> int:
        return len(self._updates_by_registration.get(registration, []))

    def wait_for_devices(
        self, predicate: Callable[[list[api.Device]], bool], timeout: float = 10.0
    ) -> list[api.Device]:
        self._wait(lambda: bool(self.updates) and predicate(self.updates[-1]), timeout, "a matching device list")
        return self.updates[-1]

    @property
    def devices(self) -> list[api.Device]:
        with self._state:
            return list(self.updates[-1]) if self.updates else []

    # -- kubelet's calls -----------------------------------------------------------------------------------

    def preferred(self, available: list[str], must_include: list[str], size: int) -> list[str]:
        request = api.PreferredAllocationRequest(
            container_requests=[
                api.ContainerPreferredAllocationRequest(
                    available_deviceIDs=available, must_include_deviceIDs=must_include, allocation_size=size
                )
            ]
        )
        response = self._plugin().GetPreferredAllocation(request, timeout=10)
        return list(response.container_responses[0].deviceIDs)

    def allocate(self, ids: list[str]) -> api.ContainerAllocateResponse:
        request = api.AllocateRequest(container_requests=[api.ContainerAllocateRequest(devices_ids=ids)])
        response = self._plugin().Allocate(request, timeout=10)
        return response.container_responses[0]

    def free_ids(self) -> list[str]:
        return [d.ID for d in self.devices if d.health == "Healthy" and d.ID not in self.allocated]

    def allocate_units(self, units: int) -> tuple[list[str], api.ContainerAllocateResponse]:
        """Kubelet's admission of a container asking for ``units``: preferred IDs, then Allocate."""
        free = self.free_ids()
        if len(free) < units:
            raise RuntimeError(f"kubelet stub: {units} unit(s) asked, {len(free)} free")
        ids = (
            self.preferred(free, [], units)
            if self.options and self.options.get_preferred_allocation_available
            else free[:units]
        )
        response = self.allocate(ids)
        self.allocated.update(ids)
        return ids, response

    def admit_pods(self, pods: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, api.ContainerAllocateResponse]]:
        """Kubelet's ``HandlePodAdditions``: the pods sorted by creation timestamp, then admitted one at a time."""
        ordered = sorted(pods, key=lambda p: str(p["metadata"].get("creationTimestamp", "")))
        return {str(p["metadata"]["name"]): self.admit(p) for p in ordered}

    def admit(self, pod: Mapping[str, Any]) -> dict[str, api.ContainerAllocateResponse]:
        """Kubelet's device manager admitting one pod (``devicemanager.ManagerImpl.Allocate``), per container name.

        Init containers, then app containers, in spec order; one Allocate per container whose limits ask for the
        resource. The IDs of a (non-restartable) init container are reused first by the containers after it
        (``devicesToReuse``); an app container's or a restartable init container's IDs leave the reuse set. A
        container that the reused IDs cover gets them with no GetPreferredAllocation; otherwise, when more IDs
        are free than it still needs, GetPreferredAllocation(free + reused, must include the reused, its size).
        """
        reuse: set[str] = set()
        out: dict[str, api.ContainerAllocateResponse] = {}
        spec = pod["spec"]
        for group in ("initContainers", "containers"):
            for container in spec.get(group) or []:
                limits = (container.get("resources") or {}).get("limits") or {}
                needed = int(limits.get(names.RESOURCE_VNPU, 0))
                if needed <= 0:
                    continue
                ids = self._devices_to_allocate(needed, reuse)
                out[str(container["name"])] = self.allocate(ids)
                self.allocated.update(ids)
                if group == "initContainers" and container.get("restartPolicy") != "Always":
                    reuse |= set(ids)
                else:
                    reuse -= set(ids)
        return out

    def _devices_to_allocate(self, needed: int, reuse: set[str]) -> list[str]:
        chosen = sorted(reuse)[:needed]
        if len(chosen) == needed:
            return chosen
        available = [d for d in self.free_ids() if d not in chosen]
        remaining = needed - len(chosen)
        if len(available) < remaining:
            raise RuntimeError(f"kubelet stub: {needed} unit(s) asked, {len(available)} free")
        if remaining < len(available) and self.options and self.options.get_preferred_allocation_available:
            offered = self.preferred(available + chosen, list(chosen), needed)
            chosen += [d for d in offered if d in available and d not in chosen][:remaining]
        chosen += [d for d in available if d not in chosen][: needed - len(chosen)]
        return chosen

    # -- internals -----------------------------------------------------------------------------------------

    def _registered(self, request: api.RegisterRequest) -> None:
        with self._state:
            self.registrations.append((time.monotonic(), request))
            number = len(self.registrations)
        dial = threading.Thread(target=self._connect, args=(request, number), name="kubelet-stub-dial", daemon=True)
        self._dials.append(dial)
        dial.start()

    def _connect(self, request: api.RegisterRequest, number: int) -> None:
        self._disconnect()
        channel = grpc.insecure_channel(f"unix:{self.directory / request.endpoint}")
        stub = api_grpc.DevicePluginStub(channel)
        try:
            options = stub.GetDevicePluginOptions(api.Empty(), timeout=10)
        except grpc.RpcError:
            channel.close()
            return
        with self._state:
            self._channel, self._stub, self.options = channel, stub, options
        self._watch = threading.Thread(target=self._follow, args=(stub, number), name="kubelet-stub-watch", daemon=True)
        self._watch.start()

    def _follow(self, stub: api_grpc.DevicePluginStub, number: int) -> None:
        try:
            for response in stub.ListAndWatch(api.Empty()):
                with self._state:
                    self.updates.append(list(response.devices))
                    self._updates_by_registration.setdefault(number, []).append(list(response.devices))
                    self._state.notify_all()
        except grpc.RpcError:
            pass  # the plugin or this stub went away; a new registration starts a new stream

    def _disconnect(self) -> None:
        with self._state:
            channel, watch = self._channel, self._watch
            self._channel, self._stub, self._watch = None, None, None
        if channel is not None:
            channel.close()
        if watch is not None and watch is not threading.current_thread():
            watch.join(timeout=5)

    def _plugin(self) -> api_grpc.DevicePluginStub:
        with self._state:
            if self._stub is None:
                raise RuntimeError("kubelet stub: no plugin registered")
            return self._stub

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        with self._state:
            if not self._state.wait_for(condition, timeout=timeout):
                raise TimeoutError(f"kubelet stub: no {what} within {timeout} s")
