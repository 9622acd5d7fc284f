"""What a container gets for its cards (DESIGN.md section 4), as a plain value: the device plugin encodes it in its
Allocate response, the DRA kubelet plugin in a CDI spec (``flexnpu.dra.core.cdi``). Pure: no I/O.

- ``ASCEND_VISIBLE_DEVICES`` lists the physical NPU indices for Ascend Docker Runtime; ``ASCEND_RT_VISIBLE_DEVICES``
  lists the logical IDs the ACL runtime sees inside the container (0..n-1: only the mounted cards exist there).
  Frameworks such as vLLM need the second one for tensor parallelism.
- Device nodes and read-only driver mounts, or, with CDI, the CDI device names instead of both.
- The in-pod runtime: its directory mounted read-only (the Python step-level client; ``PYTHONPATH`` points at it
  only where ``NodeLayout.python_path`` asks: a variable from the device plugin or a CDI spec replaces the image's
  own ``PYTHONPATH``, since neither kubelet nor the runtime can extend it, and the native interposer needs none),
  the node daemon's socket directory (read-only: connecting to a socket needs no write access, and a
  pod must not be able to remove the socket of its neighbours; the card regions and registration slots live
  there too), the registration's own slot file read-write on top of it where it exists before the container
  starts (``NodeLayout.slot_mount``; the interposer maps its slot read-write, and a read-only slot leaves the
  process ungated), and the ``FLEXNPU_*`` variables.
- The native interposer (DESIGN.md section 7): the library mounted read-only, and a host file naming it
  bind-mounted read-only onto ``/etc/ld.so.preload``, so that the dynamic loader puts it into every process of
  the container and no variable or interpreter flag turns it off. ``FLEXNPU_SHIM_DIR`` names the directory of
  the slots, ``FLEXNPU_ID`` the registration whose slot ``slot-<id>.shm`` the pod uses (the id the operator
  registers the pod's claim under); ``FLEXNPU_CLAIM`` carries the same id for the Python client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flexnpu import names
from flexnpu.annotations import CardAssignment
from flexnpu.priority import Priority


@dataclass(frozen=True)
class Mount:
    container_path: str
    host_path: str
    read_only: bool


@dataclass(frozen=True)
class DeviceNode:
    container_path: str
    host_path: str
    permissions: str = "rw"


@dataclass(frozen=True)
class ContainerAllocation:
    """Everything kubelet must inject into one container."""

    envs: tuple[tuple[str, str], ...]
    mounts: tuple[Mount, ...]
    devices: tuple[DeviceNode, ...]
    cdi_devices: tuple[str, ...]

    def env(self) -> dict[str, str]:
        return dict(self.envs)


@dataclass(frozen=True)
class NodeLayout:
    """Where things live on the host, from the device plugin's settings."""

    units_per_card: int
    use_cdi: bool = False
    inject_shim: bool = True
    shim_socket_dir: str = names.SHIM_SOCKET_DIR
    shim_runtime_dir: str = names.SHIM_RUNTIME_HOST_DIR
    dev_dir: str = "/dev"
    interposer: bool = True
    interposer_host_path: str = names.INTERPOSER_HOST_PATH
    interposer_pod_path: str = names.INTERPOSER_POD_PATH
    preload_host_file: str = names.PRELOAD_HOST_FILE
    python_path: bool = False
    """Set ``PYTHONPATH`` to the runtime directory (its ``sitecustomize`` starts the Python step-level client). It
    replaces the image's own ``PYTHONPATH``: off by default; a pod that wants the client and has a path of its own
    names both in its own env (``PYTHONPATH=/usr/local/flexnpu/runtime:...``: the pod's env wins)."""
    slot_mount: bool = False
    """Mount the registration's slot file read-write over the read-only shim directory (the interposer maps it
    read-write: pod-wide memory account, want flag, usage). Only where the registration, and so its slot, exists
    before the container starts (the DRA plugin registers in NodePrepareResources)."""


@dataclass(frozen=True)
class Workload:
    """Who the container belongs to: the pod's priority, its claim (``namespace/name``) and registration id.

    ``flexnpu_ids`` holds one id per card of the container, in card order (a whole-card pod has a claim per card);
    empty while the claim is not there yet. The interposer and the Python client use one registration, the first
    card's: a container spanning several whole cards is gated on its first card only.
    """

    priority: Priority
    claim: str
    flexnpu_ids: tuple[str, ...] = ()


def container_allocation(
    cards: Sequence[CardAssignment], workload: Workload, layout: NodeLayout
) -> ContainerAllocation:
    envs = visible_device_envs(cards) + (shim_envs(cards, workload, layout) if layout.inject_shim else ())
    mounts = () if layout.use_cdi else driver_mounts()
    if layout.inject_shim:
        mounts += shim_mounts(layout)
        if layout.slot_mount and workload.flexnpu_ids:
            mounts += (slot_mount(layout, workload.flexnpu_ids[0]),)
        if layout.interposer:
            mounts += interposer_mounts(layout)
    devices = () if layout.use_cdi else device_nodes(cards, layout)
    cdi = tuple(f"{names.CDI_KIND}={c.index}" for c in cards) if layout.use_cdi else ()
    return ContainerAllocation(envs=envs, mounts=mounts, devices=devices, cdi_devices=cdi)


def visible_device_envs(cards: Sequence[CardAssignment]) -> tuple[tuple[str, str], ...]:
    return (
        (names.ENV_ASCEND_VISIBLE_DEVICES, ",".join(str(c.index) for c in cards)),
        (names.ENV_ASCEND_RT_VISIBLE_DEVICES, ",".join(str(i) for i in range(len(cards)))),
    )


def shim_envs(cards: Sequence[CardAssignment], workload: Workload, layout: NodeLayout) -> tuple[tuple[str, str], ...]:
    units = sum(c.units for c in cards) if len(cards) > 1 else cards[0].units
    share = min(1.0, cards[0].units / layout.units_per_card)
    return (
        (names.ENV_CARD, ",".join(c.uuid for c in cards)),
        (names.ENV_CARD_INDEX, ",".join(str(c.index) for c in cards)),
        (names.ENV_UNITS, str(units)),
        (names.ENV_UNITS_PER_CARD, str(layout.units_per_card)),
        (names.ENV_SHARE, f"{share:g}"),
        (names.ENV_MEMORY_MIB, str(cards[0].memory_mib)),
        (names.ENV_PRIORITY, workload.priority.value),
        (names.ENV_CLAIM, workload.flexnpu_ids[0] if workload.flexnpu_ids else workload.claim),
        (names.ENV_SOCKET, f"{names.SHIM_SOCKET_DIR}/{names.SHIM_SOCKET_NAME}"),
        (names.ENV_SHIM_DIR, names.SHIM_SOCKET_DIR),
        *((("PYTHONPATH", names.SHIM_RUNTIME_POD_DIR),) if layout.python_path else ()),
    ) + (((names.ENV_ID, workload.flexnpu_ids[0]),) if workload.flexnpu_ids else ())


def driver_mounts() -> tuple[Mount, ...]:
    return tuple(Mount(container_path=p, host_path=p, read_only=True) for p in names.ASCEND_DRIVER_MOUNTS)


def shim_mounts(layout: NodeLayout) -> tuple[Mount, ...]:
    return (
        Mount(container_path=names.SHIM_RUNTIME_POD_DIR, host_path=layout.shim_runtime_dir, read_only=True),
        Mount(container_path=names.SHIM_SOCKET_DIR, host_path=layout.shim_socket_dir, read_only=True),
    )


def slot_mount(layout: NodeLayout, flexnpu_id: str) -> Mount:
    """The registration's own slot, read-write, on top of the read-only shim directory: the pod can write its own
    slot (memory account, want flag, usage) and no other pod's."""
    name = names.slot_file(flexnpu_id)
    return Mount(
        container_path=f"{names.SHIM_SOCKET_DIR}/{name}", host_path=f"{layout.shim_socket_dir}/{name}", read_only=False
    )


def interposer_mounts(layout: NodeLayout) -> tuple[Mount, ...]:
    """The library, and the host file naming it (``preload_text``) as the container's ``/etc/ld.so.preload``."""
    return (
        Mount(container_path=layout.interposer_pod_path, host_path=layout.interposer_host_path, read_only=True),
        Mount(container_path=names.PRELOAD_POD_FILE, host_path=layout.preload_host_file, read_only=True),
    )


def preload_text(layout: NodeLayout) -> str:
    """What the host file mounted onto ``/etc/ld.so.preload`` holds: the library's path inside the pod."""
    return layout.interposer_pod_path + "\n"


def device_nodes(cards: Sequence[CardAssignment], layout: NodeLayout) -> tuple[DeviceNode, ...]:
    per_card = tuple(f"/dev/davinci{c.index}" for c in cards)
    return tuple(
        DeviceNode(container_path=p, host_path=layout.dev_dir + p.removeprefix("/dev"))
        for p in per_card + names.ASCEND_DEVICE_NODES
    )
