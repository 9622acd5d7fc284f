"""Turning the runtime on in a process: from the FLEXNPU_* environment (sitecustomize, ``flexnpu shim run``) or
explicitly (``with flexnpu.shim.slice():``).

The device plugin injects the variables named in ``flexnpu.names``; this module reads them once, builds the grant
client and the adapter the ``FLEXNPU_DEVICE`` variable selects, and keeps one runtime per process:

- ``simnpu:<socket>``: the real-time simulated NPU (``runtime.simnpu`` is the gated device to launch on);
- ``npu`` / ``cuda`` / ``cpu`` / ``auto`` (default): PyTorch, gated per operator, installed when the process
  imports torch (never imported by us before that);
- ``step``: no operator gating; only ``slice()`` blocks take grants (inference servers: one grant per step).

``FLEXNPU_CLAIM`` is the registration id (``flexnpu_id``) the process presents to flexnpud; without it, or with
``FLEXNPU_SHIM_DISABLE=1``, the runtime stays off and ``slice()`` blocks run ungated.

Grants come from flexnpud's shared-memory grant path (``shm_client``: the registration's slot in
``FLEXNPU_SHIM_DIR``, default the grant socket's directory, named by ``FLEXNPU_ID``, default the claim), with the
socket for the hello; only where flexnpud made no slot does the runtime take its grants over the socket.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from flexnpu import names
from flexnpu.shim.runtime.grant_client import Lease
from flexnpu.shim.runtime.shm_client import make_grants
from flexnpu.shim.runtime.slicer import METER_WALL, Slicer

log = logging.getLogger("flexnpu.shim.runtime")

DEFAULT_SOCKET = os.path.join(names.SHIM_SOCKET_DIR, names.SHIM_SOCKET_NAME)
DEVICE_KINDS = ("auto", "npu", "cuda", "cpu", "step")
SIMNPU_PREFIX = "simnpu:"


class RuntimeConfigError(ValueError):
    """A FLEXNPU_* variable is malformed; the message names it."""


@dataclass(frozen=True)
class RuntimeConfig:
    """What the runtime of one process needs, read from the FLEXNPU_* environment."""

    flexnpu_id: str
    socket_path: str = DEFAULT_SOCKET
    share: float = 1.0
    memory_mib: Optional[int] = None
    priority: str = "normal"
    device: str = "auto"
    shim_dir: str = ""  # flexnpud's slots and card regions; "" -> the grant socket's directory
    slot_id: str = ""  # the registration whose slot this process uses; "" -> flexnpu_id

    @property
    def slot_dir(self) -> str:
        return self.shim_dir or os.path.dirname(self.socket_path)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Optional[RuntimeConfig]:
        """The config the environment describes; None when the runtime is off for this process."""
        if env.get(names.ENV_SHIM_DISABLE, "").strip().lower() in ("1", "true", "yes"):
            return None
        flexnpu_id = env.get(names.ENV_CLAIM, "").strip()
        if not flexnpu_id:
            return None
        device = env.get(names.ENV_DEVICE, "").strip() or "auto"
        if device not in DEVICE_KINDS and not (device.startswith(SIMNPU_PREFIX) and len(device) > len(SIMNPU_PREFIX)):
            raise RuntimeConfigError(
                "%s=%r: must be one of %s or simnpu:<socket>" % (names.ENV_DEVICE, device, ", ".join(DEVICE_KINDS))
            )
        return cls(
            flexnpu_id=flexnpu_id,
            socket_path=env.get(names.ENV_SOCKET, "").strip() or DEFAULT_SOCKET,
            share=_share(env.get(names.ENV_SHARE, "")),
            memory_mib=_mib(env.get(names.ENV_MEMORY_MIB, "")),
            priority=env.get(names.ENV_PRIORITY, "").strip() or "normal",
            device=device,
            shim_dir=env.get(names.ENV_SHIM_DIR, "").strip(),
            slot_id=env.get(names.ENV_ID, "").strip(),
        )


def _share(raw: str) -> float:
    if not raw.strip():
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise RuntimeConfigError("%s=%r: must be a number in (0, 1]" % (names.ENV_SHARE, raw))
    return value


def _mib(raw: str) -> Optional[int]:
    if not raw.strip():
        return None
    if not raw.strip().isdigit():
        raise RuntimeConfigError("%s=%r: must be a whole number of MiB" % (names.ENV_MEMORY_MIB, raw))
    return int(raw)


class _NoDevice:
    """Step-level gating only: the application synchronizes its own work inside each step."""

    def drain(self) -> None:
        pass

    def mark(self) -> None:
        pass

    def settle(self) -> None:
        pass


class Runtime:
    """The runtime of this process: one grant client, one slicer, the selected adapter."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self.grants = make_grants(
            config.slot_dir, config.flexnpu_id, config.socket_path, config.share, slot_id=config.slot_id
        )
        self.simnpu: Any = None
        self.memory: Any = None
        self.torch_kind = ""
        if config.device.startswith(SIMNPU_PREFIX):
            self.slicer = self._simnpu(config.device[len(SIMNPU_PREFIX) :])
        else:
            self._device: Any = _NoDevice()
            self.slicer = Slicer(self.grants, self, METER_WALL)
            if config.device != "step":
                _when_imported("torch", self._install_torch)

    def _simnpu(self, socket_path: str) -> Slicer:
        from flexnpu.shim.runtime.simnpu_adapter import GatedSimNpu
        from flexnpu.shim.runtime.simnpu_client import SimNpuClient

        client = SimNpuClient(socket_path, name=self.config.flexnpu_id, cap_mib=self.config.memory_mib)
        self.simnpu = GatedSimNpu(client, self.grants)
        assert self.simnpu.slicer is not None
        slicer: Slicer = self.simnpu.slicer
        return slicer

    def _install_torch(self, torch: ModuleType) -> None:
        from flexnpu.shim.runtime import torch_adapter

        kind = torch_adapter.detect_kind(torch) if self.config.device == "auto" else self.config.device
        device = torch_adapter.TorchDevice(torch, kind)
        cap = self.config.memory_mib
        if cap is not None:
            device.cap_memory(cap)
        self.memory = torch_adapter.MemoryAccount(torch, kind, None if cap is None else cap << 20)
        self._device = device
        self.torch_kind = kind
        torch_adapter.install_operator_gate(torch, self.slicer.launch, self.memory)
        log.info("flexnpu: gating torch %s operators of %s", kind, self.config.flexnpu_id)

    # the slicer's Device: forwards to the adapter installed so far
    def drain(self) -> None:
        self._device.drain()

    def mark(self) -> None:
        self._device.mark()

    def settle(self) -> None:
        self._device.settle()

    def close(self) -> None:
        """Return the grant (draining first) and disconnect."""
        if self.simnpu is not None:
            self.simnpu.close()
            return
        self.slicer.finish()
        self.grants.close()


_lock = threading.Lock()
_active: Optional[Runtime] = None


def activate(config: RuntimeConfig) -> Runtime:
    """The process's runtime, built from ``config`` on the first call (later calls return the same one)."""
    global _active
    with _lock:
        if _active is None:
            _active = Runtime(config)
            atexit.register(deactivate)
        return _active


def activate_from_env(env: Optional[Mapping[str, str]] = None) -> Optional[Runtime]:
    """Activate from the FLEXNPU_* variables; None when they leave the runtime off."""
    config = RuntimeConfig.from_env(os.environ if env is None else env)
    return activate(config) if config is not None else None


def active() -> Optional[Runtime]:
    return _active


def deactivate() -> None:
    """Return the grant and forget the runtime (atexit does this at the end of the process)."""
    global _active
    with _lock:
        runtime, _active = _active, None
    if runtime is not None:
        try:
            runtime.close()
        except Exception as exc:  # at exit the daemon may be gone already: nothing left to return
            log.debug("flexnpu: closing the runtime: %s", exc)


@contextmanager
def slice() -> Iterator[Optional[Lease]]:
    """One grant for the block (step level), from the active runtime or the environment; ungated without one."""
    runtime = _active if _active is not None else activate_from_env()
    if runtime is None:
        yield None
        return
    with runtime.slicer.step() as lease:
        yield lease


class _ImportHook(importlib.abc.MetaPathFinder):
    """Calls ``callback(module)`` right after ``name`` is first imported, without importing it ourselves."""

    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.callback = callback
        self._finding = False

    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != self.name or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is None or spec.loader is None:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec.loader = _AfterLoader(spec.loader, self.callback)
        return spec


class _AfterLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, callback: Callable[[ModuleType], None]) -> None:
        self.inner = inner
        self.callback = callback

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        module.__loader__ = self.inner  # resources and reloads go to the real loader again
        if module.__spec__ is not None:
            module.__spec__.loader = self.inner
        try:
            self.callback(module)
        except Exception as exc:  # gating must never break the application's import
            log.warning("flexnpu: could not install the runtime into %s: %s", module.__name__, exc)


def _when_imported(name: str, callback: Callable[[ModuleType], None]) -> None:
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
    else:
        sys.meta_path.insert(0, _ImportHook(name, callback))
