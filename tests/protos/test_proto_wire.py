"""The generated kubelet protos are wire-compatible with upstream and current with their .proto sources.

The tables below are upstream's (k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/api.proto, podresources/v1,
dra/v1 and pluginregistration/v1 api.proto at v0.37.2), typed in by hand:
a renamed field or a shifted number fails here.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.descriptor_pb2 import FileDescriptorProto

from flexnpu.protos import deviceplugin_v1beta1_pb2, dra_v1_pb2, pluginregistration_v1_pb2, podresources_v1_pb2

ROOT = Path(__file__).resolve().parents[2]

# message -> {field: "number [repeated|optional] type"}; a map field is spelled map<string,VALUE>
DEVICEPLUGIN_FIELDS: dict[str, dict[str, str]] = {
    "DevicePluginOptions": {"pre_start_required": "1 bool", "get_preferred_allocation_available": "2 bool"},
    "RegisterRequest": {
        "version": "1 string",
        "endpoint": "2 string",
        "resource_name": "3 string",
        "options": "4 DevicePluginOptions",
    },
    "Empty": {},
    "ListAndWatchResponse": {"devices": "1 repeated Device"},
    "TopologyInfo": {"nodes": "1 repeated NUMANode"},
    "NUMANode": {"ID": "1 int64"},
    "Device": {"ID": "1 string", "health": "2 string", "topology": "3 TopologyInfo"},
    "PreStartContainerRequest": {"devices_ids": "1 repeated string"},
    "PreStartContainerResponse": {},
    "PreferredAllocationRequest": {"container_requests": "1 repeated ContainerPreferredAllocationRequest"},
    "ContainerPreferredAllocationRequest": {
        "available_deviceIDs": "1 repeated string",
        "must_include_deviceIDs": "2 repeated string",
        "allocation_size": "3 int32",
    },
    "PreferredAllocationResponse": {"container_responses": "1 repeated ContainerPreferredAllocationResponse"},
    "ContainerPreferredAllocationResponse": {"deviceIDs": "1 repeated string"},
    "AllocateRequest": {"container_requests": "1 repeated ContainerAllocateRequest"},
    "ContainerAllocateRequest": {"devices_ids": "1 repeated string"},
    "CDIDevice": {"name": "1 string"},
    "AllocateResponse": {"container_responses": "1 repeated ContainerAllocateResponse"},
    "ContainerAllocateResponse": {
        "envs": "1 map<string,string>",
        "mounts": "2 repeated Mount",
        "devices": "3 repeated DeviceSpec",
        "annotations": "4 map<string,string>",
        "cdi_devices": "5 repeated CDIDevice",
    },
    "Mount": {"container_path": "1 string", "host_path": "2 string", "read_only": "3 bool"},
    "DeviceSpec": {"container_path": "1 string", "host_path": "2 string", "permissions": "3 string"},
}

PODRESOURCES_FIELDS: dict[str, dict[str, str]] = {
    "AllocatableResourcesRequest": {},
    "AllocatableResourcesResponse": {
        "devices": "1 repeated ContainerDevices",
        "cpu_ids": "2 repeated int64",
        "memory": "3 repeated ContainerMemory",
    },
    "ListPodResourcesRequest": {},
    "ListPodResourcesResponse": {"pod_resources": "1 repeated PodResources"},
    "PodResources": {"name": "1 string", "namespace": "2 string", "containers": "3 repeated ContainerResources"},
    "ContainerResources": {
        "name": "1 string",
        "devices": "2 repeated ContainerDevices",
        "cpu_ids": "3 repeated int64",
        "memory": "4 repeated ContainerMemory",
        "dynamic_resources": "5 repeated DynamicResource",
    },
    "ContainerMemory": {"memory_type": "1 string", "size": "2 uint64", "topology": "3 TopologyInfo"},
    "ContainerDevices": {"resource_name": "1 string", "device_ids": "2 repeated string", "topology": "3 TopologyInfo"},
    "TopologyInfo": {"nodes": "1 repeated NUMANode"},
    "NUMANode": {"ID": "1 int64"},
    "DynamicResource": {
        "claim_name": "2 string",
        "claim_namespace": "3 string",
        "claim_resources": "4 repeated ClaimResource",
    },
    "ClaimResource": {
        "cdi_devices": "1 repeated CDIDevice",
        "driver_name": "2 string",
        "pool_name": "3 string",
        "device_name": "4 string",
    },
    "CDIDevice": {"name": "1 string"},
    "GetPodResourcesRequest": {"pod_name": "1 string", "pod_namespace": "2 string"},
    "GetPodResourcesResponse": {"pod_resources": "1 PodResources"},
}

# service -> {method: (input, output, server streaming)}
DEVICEPLUGIN_SERVICES = {
    "Registration": {"Register": ("RegisterRequest", "Empty", False)},
    "DevicePlugin": {
        "GetDevicePluginOptions": ("Empty", "DevicePluginOptions", False),
        "ListAndWatch": ("Empty", "ListAndWatchResponse", True),
        "GetPreferredAllocation": ("PreferredAllocationRequest", "PreferredAllocationResponse", False),
        "Allocate": ("AllocateRequest", "AllocateResponse", False),
        "PreStartContainer": ("PreStartContainerRequest", "PreStartContainerResponse", False),
    },
}

PODRESOURCES_SERVICES = {
    "PodResourcesLister": {
        "List": ("ListPodResourcesRequest", "ListPodResourcesResponse", False),
        "GetAllocatableResources": ("AllocatableResourcesRequest", "AllocatableResourcesResponse", False),
        "Get": ("GetPodResourcesRequest", "GetPodResourcesResponse", False),
    },
}

DRA_FIELDS: dict[str, dict[str, str]] = {
    "NodePrepareResourcesRequest": {"claims": "1 repeated Claim"},
    "NodePrepareResourcesResponse": {"claims": "1 map<string,NodePrepareResourceResponse>"},
    "NodePrepareResourceResponse": {"devices": "1 repeated Device", "error": "2 string"},
    "Device": {
        "request_names": "1 repeated string",
        "pool_name": "2 string",
        "device_name": "3 string",
        "cdi_device_ids": "4 repeated string",
        "share_id": "5 optional string",
    },
    "NodeUnprepareResourcesRequest": {"claims": "1 repeated Claim"},
    "NodeUnprepareResourcesResponse": {"claims": "1 map<string,NodeUnprepareResourceResponse>"},
    "NodeUnprepareResourceResponse": {"error": "1 string"},
    "Claim": {"namespace": "1 string", "uid": "2 string", "name": "3 string"},
}

DRA_SERVICES = {
    "DRAPlugin": {
        "NodePrepareResources": ("NodePrepareResourcesRequest", "NodePrepareResourcesResponse", False),
        "NodeUnprepareResources": ("NodeUnprepareResourcesRequest", "NodeUnprepareResourcesResponse", False),
    },
}

PLUGINREGISTRATION_FIELDS: dict[str, dict[str, str]] = {
    "PluginInfo": {
        "type": "1 string",
        "name": "2 string",
        "endpoint": "3 string",
        "supported_versions": "4 repeated string",
    },
    "RegistrationStatus": {"plugin_registered": "1 bool", "error": "2 string"},
    "RegistrationStatusResponse": {},
    "InfoRequest": {},
}

PLUGINREGISTRATION_SERVICES = {
    "Registration": {
        "GetInfo": ("InfoRequest", "PluginInfo", False),
        "NotifyRegistrationStatus": ("RegistrationStatus", "RegistrationStatusResponse", False),
    },
}

FILES = pytest.mark.parametrize(
    ("file", "package", "fields", "services"),
    [
        (deviceplugin_v1beta1_pb2.DESCRIPTOR, "v1beta1", DEVICEPLUGIN_FIELDS, DEVICEPLUGIN_SERVICES),
        (podresources_v1_pb2.DESCRIPTOR, "v1", PODRESOURCES_FIELDS, PODRESOURCES_SERVICES),
        (dra_v1_pb2.DESCRIPTOR, "k8s.io.kubelet.pkg.apis.dra.v1", DRA_FIELDS, DRA_SERVICES),
        (
            pluginregistration_v1_pb2.DESCRIPTOR,
            "pluginregistration",
            PLUGINREGISTRATION_FIELDS,
            PLUGINREGISTRATION_SERVICES,
        ),
    ],
    ids=["deviceplugin-v1beta1", "podresources-v1", "dra-v1", "pluginregistration-v1"],
)


SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
}


def field_spec(field: FieldDescriptor) -> str:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        return f"{field.number} map<string,{field_spec(message.fields_by_name['value']).split(' ')[-1]}>"
    kind = message.name if message is not None else SCALARS[field.type]
    optional = field.containing_oneof is not None and field.containing_oneof.name == "_" + field.name
    label = "repeated " if field.is_repeated else "optional " if optional else ""
    return f"{field.number} {label}{kind}"


def field_table(message: Descriptor) -> dict[str, str]:
    return {f.name: field_spec(f) for f in message.fields}


@FILES
def test_package_is_upstreams(file: FileDescriptor, package: str, fields: object, services: object) -> None:
    assert file.package == package
    source = FileDescriptorProto()
    file.CopyToProto(source)
    assert source.syntax == "proto3"
    assert not source.dependency


@FILES
def test_messages_and_field_numbers_match_upstream(
    file: FileDescriptor, package: str, fields: dict[str, dict[str, str]], services: object
) -> None:
    assert set(file.message_types_by_name) == set(fields)
    for name, expected in fields.items():
        message = file.message_types_by_name[name]
        assert message.full_name == f"{package}.{name}"
        assert field_table(message) == expected, name


@FILES
def test_services_and_methods_match_upstream(
    file: FileDescriptor, package: str, fields: object, services: dict[str, dict[str, tuple[str, str, bool]]]
) -> None:
    assert set(file.services_by_name) == set(services)
    for service_name, methods in services.items():
        service = file.services_by_name[service_name]
        assert service.full_name == f"{package}.{service_name}"
        actual = {m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in service.methods}
        assert actual == methods
        assert not any(m.client_streaming for m in service.methods)


def test_container_allocate_response_maps_are_string_maps() -> None:
    response = deviceplugin_v1beta1_pb2.ContainerAllocateResponse(envs={"A": "1"}, annotations={"b": "2"})
    decoded = deviceplugin_v1beta1_pb2.ContainerAllocateResponse.FromString(response.SerializeToString())
    assert dict(decoded.envs) == {"A": "1"}
    assert dict(decoded.annotations) == {"b": "2"}


def test_generated_grpc_modules_import_package_relative() -> None:
    from flexnpu.protos import deviceplugin_v1beta1_pb2_grpc, podresources_v1_pb2_grpc

    # The names protoc gives the imported modules (the stubs do not declare them).
    assert vars(deviceplugin_v1beta1_pb2_grpc)["deviceplugin__v1beta1__pb2"] is deviceplugin_v1beta1_pb2
    assert vars(podresources_v1_pb2_grpc)["podresources__v1__pb2"] is podresources_v1_pb2


def test_committed_code_is_current() -> None:
    result = subprocess.run(
        [sys.executable, "protos/generate.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_check_detects_a_changed_module() -> None:
    sys.path.insert(0, str(ROOT / "protos"))
    try:
        generate = importlib.import_module("generate")  # the script itself, as CI runs it
    finally:
        sys.path.remove(str(ROOT / "protos"))
    fresh = generate.generate()
    assert generate.stale(fresh) == []
    stub = "deviceplugin_v1beta1_pb2.pyi"
    changed = dict(fresh, **{stub: fresh[stub].replace("allocation_size", "allocation_count")})
    assert generate.stale(changed) == [stub]
    module = "deviceplugin_v1beta1_pb2.py"
    restamped = dict(fresh, **{module: fresh[module].replace("Python Version: ", "Python Version: 9")})
    assert generate.stale(restamped) == []
