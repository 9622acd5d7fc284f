"""Every name the components agree on: resource names, annotation keys, the CRD, environment variables.

One place defines each name; no other module spells a resource name or annotation key.
"""

from __future__ import annotations

from typing import Final

DOMAIN: Final = "flexnpu.io"

# Extended resources advertised to kubelet and requested in pod specs.
RESOURCE_VNPU: Final = "huawei.com/vnpu"
RESOURCE_VNPU_MEMORY: Final = "huawei.com/vnpu-memory"

# Node annotation written by the device plugin.
ANNOTATION_INVENTORY: Final = f"{DOMAIN}/inventory"
# Written on its node by the device plugin when a VNpuClaim of the node is gone (its units free on flexnpud): a
# node update, which moves pods kube-scheduler parked as unschedulable back to its queue (it watches no claims).
ANNOTATION_CLAIMS_RELEASED: Final = f"{DOMAIN}/claims-released"

# Pod annotations: user input.
ANNOTATION_PRIORITY: Final = f"{DOMAIN}/priority"
ANNOTATION_CARD_MODEL: Final = f"{DOMAIN}/card-model"

# Pod annotations: the bind handshake (extender -> device plugin).
ANNOTATION_ASSIGNED: Final = f"{DOMAIN}/assigned"
ANNOTATION_BIND_PHASE: Final = f"{DOMAIN}/bind-phase"
ANNOTATION_BIND_TIME: Final = f"{DOMAIN}/bind-time"
ANNOTATION_BIND_REASON: Final = f"{DOMAIN}/bind-reason"
# Written by the device plugin as kubelet allocates each container: the names of the containers served so far
# (comma-separated, kubelet order), so that a restarted plugin resumes with the next one.
ANNOTATION_ALLOCATED_CONTAINERS: Final = f"{DOMAIN}/allocated-containers"

# Labels.
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_CLAIM_POD_UID: Final = f"{DOMAIN}/pod-uid"

# The node daemon flexnpud: its default registration API port and the name of that port in the node pod spec.
DAEMON_PORT: Final = 8765
DAEMON_PORT_NAME: Final = "daemon"

# The VNpuClaim custom resource.
CRD_GROUP: Final = DOMAIN
CRD_VERSION: Final = "v1alpha1"
CRD_KIND: Final = "VNpuClaim"
CRD_PLURAL: Final = "vnpuclaims"
CRD_SINGULAR: Final = "vnpuclaim"
CRD_SHORT_NAME: Final = "vnc"
CRD_NAME: Final = f"{CRD_PLURAL}.{CRD_GROUP}"
CLAIM_FINALIZER: Final = f"{DOMAIN}/deregister"

# Device plugin.
DEVICE_PLUGIN_API_VERSION: Final = "v1beta1"
KUBELET_DEVICE_PLUGIN_DIR: Final = "/var/lib/kubelet/device-plugins"
KUBELET_SOCKET_NAME: Final = "kubelet.sock"
PLUGIN_SOCKET_NAME: Final = "flexnpu-vnpu.sock"
CDI_KIND: Final = "huawei.com/npu"

# Environment variables injected by Allocate and read by the in-pod runtime.
ENV_ASCEND_VISIBLE_DEVICES: Final = "ASCEND_VISIBLE_DEVICES"
ENV_ASCEND_RT_VISIBLE_DEVICES: Final = "ASCEND_RT_VISIBLE_DEVICES"
ENV_CARD: Final = "FLEXNPU_CARD"
ENV_CARD_INDEX: Final = "FLEXNPU_CARD_INDEX"
ENV_UNITS: Final = "FLEXNPU_UNITS"
ENV_UNITS_PER_CARD: Final = "FLEXNPU_UNITS_PER_CARD"
ENV_SHARE: Final = "FLEXNPU_SHARE"
ENV_MEMORY_MIB: Final = "FLEXNPU_MEMORY_MIB"
ENV_PRIORITY: Final = "FLEXNPU_PRIORITY"
ENV_CLAIM: Final = "FLEXNPU_CLAIM"
ENV_ID: Final = "FLEXNPU_ID"
ENV_SHIM_DIR: Final = "FLEXNPU_SHIM_DIR"
ENV_SOCKET: Final = "FLEXNPU_SOCKET"
ENV_DEVICE: Final = "FLEXNPU_DEVICE"
ENV_SHIM_DISABLE: Final = "FLEXNPU_SHIM_DISABLE"

# Paths on the node and in the pod.
SHIM_SOCKET_DIR: Final = "/var/run/flexnpu"
SHIM_SOCKET_NAME: Final = "grant.sock"
SHIM_RUNTIME_HOST_DIR: Final = "/var/lib/flexnpu/runtime"
SHIM_RUNTIME_POD_DIR: Final = "/usr/local/flexnpu/runtime"
# The native interposer (DESIGN.md section 7): the library on the node and where pods see it, and the host file
# holding that pod path, which Allocate bind-mounts read-only onto the container's /etc/ld.so.preload.
INTERPOSER_HOST_PATH: Final = "/var/lib/flexnpu/lib/libflexnpu.so"
INTERPOSER_POD_PATH: Final = "/usr/local/flexnpu/lib/libflexnpu.so"
PRELOAD_HOST_FILE: Final = "/var/lib/flexnpu/ld.so.preload"
PRELOAD_POD_FILE: Final = "/etc/ld.so.preload"

_SLOT_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def slot_file(flexnpu_id: str) -> str:
    """The registration's shared-memory slot in the shim directory (flexnpud makes it, the pod maps it).

    ``slot-<id>.shm``; an id that is not 1..128 of [A-Za-z0-9._-] (or starts with '.') is hashed (FNV-1a 64), as
    libflexnpu's ``slot_name`` does (shim/native/gate.c).
    """
    if 0 < len(flexnpu_id) <= 128 and not flexnpu_id.startswith(".") and all(c in _SLOT_SAFE for c in flexnpu_id):
        return f"slot-{flexnpu_id}.shm"
    h = 0xCBF29CE484222325
    try:
        raw = flexnpu_id.encode("utf-8", "surrogateescape")  # the bytes an environment variable carried
    except UnicodeEncodeError:
        raw = flexnpu_id.encode("utf-8", "surrogatepass")  # a lone surrogate from JSON: hashed, never an error
    for byte in raw:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"slot-h{h:016x}.shm"


ASCEND_DEVICE_NODES: Final = ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")
ASCEND_DRIVER_MOUNTS: Final = (
    "/usr/local/Ascend/driver/lib64",
    "/usr/local/Ascend/driver/version.info",
    "/usr/local/dcmi",
    "/usr/local/bin/npu-smi",
)

# The DRA mode (resource.k8s.io/v1 with consumable capacity, KEP-5075): the driver, its DeviceClass, the capacities
# of each card's device, the opaque claim configuration, and where kubelet and the container runtime look.
DRA_DRIVER: Final = "npu.flexnpu.io"
DRA_DEVICE_CLASS: Final = "vnpu.flexnpu.io"
DRA_CAPACITY_UNITS: Final = "units"  # a plain integer Quantity, 1..units_per_card
DRA_CAPACITY_MEMORY: Final = "memory"  # a Quantity in bytes ("16Gi"); the plugin rounds it up to whole MiB
DRA_DEVICE_PREFIX: Final = "npu-"  # device names are npu-<index>
DRA_CONFIG_API_VERSION: Final = "flexnpu.io/v1alpha1"
DRA_CONFIG_KIND: Final = "VNpuConfig"
DRA_REGISTRATION_SOCKET: Final = "/var/lib/kubelet/plugins_registry/npu.flexnpu.io-reg.sock"
DRA_PLUGIN_SOCKET: Final = "/var/lib/kubelet/plugins/npu.flexnpu.io/dra.sock"
DRA_CHECKPOINT: Final = "/var/lib/kubelet/plugins/npu.flexnpu.io/checkpoint.json"
DRA_CDI_DIR: Final = "/var/run/cdi"
DRA_CDI_KIND: Final = "flexnpu.io/npu"
DRA_SERVICE: Final = "v1.DRAPlugin"  # k8s.io/kubelet/pkg/apis/dra/v1 DRAPluginService: the supported_versions entry
DRA_PLUGIN_TYPE: Final = "DRAPlugin"  # k8s.io/kubelet/pkg/apis/pluginregistration/v1 DRAPlugin
