"""deploy/examples: valid objects that the chart's defaults and the shared contract accept as written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from chart_support import EXAMPLES_DIR, KUBE_VERSIONS, Manifest, load_yaml_docs

from flexnpu import names
from flexnpu.cards import CARD_MODELS
from flexnpu.claims import parse_claim_spec
from flexnpu.dra.core.claims import parse_vnpu_config
from flexnpu.dra.core.quantity import parse_quantity
from flexnpu.dra.core.slices import ATTRIBUTE_HCCS_RING
from flexnpu.priority import Priority, parse_priority
from flexnpu.units import UnitsConfig, VnpuRequest, parse_vnpu_request

EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
# Mode dra's examples (resource.k8s.io/v1) need Kubernetes 1.34+: checked against the newest schema only.
DRA_EXAMPLES = [p for p in EXAMPLES if p.name.startswith("dra-")]
VALIDATED = [(p, v) for p in EXAMPLES for v in KUBE_VERSIONS if p not in DRA_EXAMPLES or v == KUBE_VERSIONS[-1]]


def pod_specs(doc: Manifest) -> list[Manifest]:
    return [doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]]


def pod_metadata(doc: Manifest) -> Manifest:
    return dict(doc["metadata"] if doc["kind"] == "Pod" else doc["spec"]["template"]["metadata"])


def vnpu_request(doc: Manifest) -> VnpuRequest:
    [container] = pod_specs(doc)[0]["containers"]
    limits = container["resources"]["limits"]
    return parse_vnpu_request(limits[names.RESOURCE_VNPU], UnitsConfig(), limits.get(names.RESOURCE_VNPU_MEMORY))


def test_all_examples_are_present() -> None:
    assert {p.name for p in EXAMPLES} == {
        "pod-vnpu.yaml",
        "vnpuclaim.yaml",
        "vllm-shared-card.yaml",
        "dra-fraction.yaml",
        "dra-two-cards-one-ring.yaml",
    }


@pytest.mark.parametrize(("path", "kube_version"), VALIDATED, ids=[f"{p.name}-{v}" for p, v in VALIDATED])
def test_examples_are_valid(path: Path, kube_version: str, chart_crds: list[Manifest]) -> None:
    claim_crd = next(c for c in chart_crds if c["metadata"]["name"] == names.CRD_NAME)
    crd_schema = claim_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for doc in load_yaml_docs(path):
        if doc["kind"] == names.CRD_KIND:
            # Our own kind: kubernetes-validate has no schema for it, so check it against the chart's CRD.
            jsonschema.validate(doc, crd_schema)
            parse_claim_spec(doc["spec"])
        else:
            kubernetes_validate.validate(doc, kube_version, strict=True)


def test_pod_example_asks_for_three_units_and_16_gib(chart_values: dict[str, Any]) -> None:
    [pod] = load_yaml_docs(EXAMPLES_DIR / "pod-vnpu.yaml")
    assert vnpu_request(pod) == VnpuRequest(units=3, whole_cards=0, memory_mib=16384)
    assert parse_priority(pod["metadata"]["annotations"][names.ANNOTATION_PRIORITY]) is Priority.HIGH
    assert pod["spec"]["schedulerName"] == chart_values["scheduler"]["schedulerName"]


def test_vllm_pair_shares_one_card_two_to_eight(chart_values: dict[str, Any]) -> None:
    small, large = load_yaml_docs(EXAMPLES_DIR / "vllm-shared-card.yaml")
    requests = [vnpu_request(small), vnpu_request(large)]
    assert [r.units for r in requests] == [2, 8]
    assert sum(r.units for r in requests) == chart_values["units"]["unitsPerCard"]
    assert all(r.is_fraction for r in requests)
    # Memory is never oversubscribed: both caps must fit the HBM of the smallest 64 GiB 910B together.
    assert sum(r.memory_mib or 0 for r in requests) <= CARD_MODELS["910B3"].hbm_mib
    for doc in (small, large):
        assert pod_specs(doc)[0]["schedulerName"] == chart_values["scheduler"]["schedulerName"]
        parse_priority(pod_metadata(doc)["annotations"][names.ANNOTATION_PRIORITY])


@pytest.mark.parametrize("index", [0, 1], ids=["small", "large"])
def test_vllm_memory_utilization_fits_its_slice(index: int) -> None:
    doc = load_yaml_docs(EXAMPLES_DIR / "vllm-shared-card.yaml")[index]
    [container] = pod_specs(doc)[0]["containers"]
    command = container["command"]
    utilization = float(command[command.index("--gpu-memory-utilization") + 1])
    cap_mib = vnpu_request(doc).memory_mib
    assert cap_mib is not None
    card_mib = CARD_MODELS["910B3"].hbm_mib  # the 64 GiB card the example is written for
    # vLLM takes utilization * the device's total: it must fit under the cap, and use most of it (90% of the slice).
    assert utilization * card_mib <= cap_mib
    assert utilization * card_mib >= 0.85 * cap_mib


def test_claim_example_is_a_registration() -> None:
    [claim] = load_yaml_docs(EXAMPLES_DIR / "vnpuclaim.yaml")
    spec = parse_claim_spec(claim["spec"])
    assert (spec.aicore_alloc, spec.memory_mib, spec.priority) == (2, 16384, Priority.NORMAL)
    assert claim["apiVersion"] == f"{names.CRD_GROUP}/{names.CRD_VERSION}"


def claim_template(path: Path) -> Manifest:
    template, pod = load_yaml_docs(path)
    assert template["kind"] == "ResourceClaimTemplate" and pod["kind"] == "Pod"
    [claim] = pod["spec"]["resourceClaims"]
    assert claim["resourceClaimTemplateName"] == template["metadata"]["name"]
    [container] = pod["spec"]["containers"]
    assert container["resources"]["claims"] == [{"name": claim["name"]}]
    devices: Manifest = template["spec"]["spec"]["devices"]
    return devices


def test_dra_fraction_asks_for_three_units_16_gib_at_high_priority() -> None:
    devices = claim_template(EXAMPLES_DIR / "dra-fraction.yaml")
    [request] = devices["requests"]
    assert request["exactly"]["deviceClassName"] == names.DRA_DEVICE_CLASS
    requested = request["exactly"]["capacity"]["requests"]
    assert parse_quantity(requested[names.DRA_CAPACITY_UNITS], "units") == 3
    assert parse_quantity(requested[names.DRA_CAPACITY_MEMORY], "memory") == 16 * 2**30
    [config] = devices["config"]
    assert config["requests"] == [request["name"]]
    assert config["opaque"]["driver"] == names.DRA_DRIVER
    assert parse_vnpu_config(config["opaque"]["parameters"]) is Priority.HIGH


def test_dra_two_whole_cards_share_one_hccs_ring() -> None:
    devices = claim_template(EXAMPLES_DIR / "dra-two-cards-one-ring.yaml")
    [request] = devices["requests"]
    assert request["exactly"]["deviceClassName"] == names.DRA_DEVICE_CLASS
    assert (request["exactly"]["allocationMode"], request["exactly"]["count"]) == ("ExactCount", 2)
    # No capacity named: each card's defaults, i.e. all its units and HBM (flexnpu.dra.core.slices).
    assert "capacity" not in request["exactly"]
    [constraint] = devices["constraints"]
    assert constraint == {"requests": [request["name"]], "matchAttribute": f"{names.DRA_DRIVER}/{ATTRIBUTE_HCCS_RING}"}
