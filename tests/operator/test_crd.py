"""The VNpuClaim CRD: names match flexnpu/names.py, the manifest is a valid CRD, and its OpenAPI schema rejects
nonsense that the API server must refuse before the operator ever sees it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from flexnpu import names
from flexnpu.claims import ClaimPhase, parse_claim_spec

CRD_FILE = Path(__file__).resolve().parents[2] / "deploy/helm/flexnpu/files" / f"{names.CRD_NAME}.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    (served,) = crd["spec"]["versions"]
    return dict(served)


@pytest.fixture(scope="module")
def validator(version: dict[str, Any]) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])


def test_names_match_the_contract(crd: dict[str, Any], version: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == names.CRD_NAME
    assert (spec["group"], spec["scope"], version["name"]) == (names.CRD_GROUP, "Namespaced", names.CRD_VERSION)
    assert spec["names"]["kind"] == names.CRD_KIND
    assert spec["names"]["plural"] == names.CRD_PLURAL
    assert spec["names"]["singular"] == names.CRD_SINGULAR
    assert spec["names"]["shortNames"] == [names.CRD_SHORT_NAME]
    assert version["served"] and version["storage"] and version["subresources"] == {"status": {}}


def test_printer_columns(version: dict[str, Any]) -> None:
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Node": ".spec.nodeName",
        "NPU": ".spec.npu",
        "AICore": ".spec.aicoreAlloc",
        "Memory": ".spec.memoryMiB",
        "Priority": ".spec.priority",
        "Phase": ".status.phase",
        "Age": ".metadata.creationTimestamp",
    }


def test_the_manifest_is_a_valid_crd(crd: dict[str, Any]) -> None:
    kubernetes_validate.validate(crd, "1.30", strict=True)


def test_status_phases_match_the_contract(version: dict[str, Any]) -> None:
    phase = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["phase"]
    assert phase["enum"] == [p.value for p in ClaimPhase]


GOOD: dict[str, Any] = {
    "apiVersion": "flexnpu.io/v1alpha1",
    "kind": "VNpuClaim",
    "metadata": {"name": "c"},
    "spec": {
        "nodeName": "n1",
        "npu": 7,
        "chip": 0,
        "aicoreAlloc": 2,
        "memoryMiB": 16384,
        "priority": "high",
        "entity": "llama",
        "podRef": {"name": "p", "uid": "u"},
    },
}


def with_spec(**change: Any) -> dict[str, Any]:
    body = copy.deepcopy(GOOD)
    for key, value in change.items():
        if value is None:
            del body["spec"][key]
        else:
            body["spec"][key] = value
    return body


def test_a_good_claim_passes_the_schema_and_the_parser(validator: jsonschema.Draft7Validator) -> None:
    validator.validate(GOOD)
    validator.validate(with_spec(chip=None, priority=None, entity=None, podRef=None))  # defaults and optionals
    assert parse_claim_spec(GOOD["spec"]).npu == 7


@pytest.mark.parametrize(
    "spec",
    [
        {"npu": 64},
        {"npu": -1},
        {"chip": 8},
        {"aicoreAlloc": 0},
        {"memoryMiB": -5},
        {"priority": "urgent"},
        {"nodeName": ""},
        {"npu": "seven"},
        {"nodeName": None},
        {"npu": None},
        {"aicoreAlloc": None},
        {"memoryMiB": None},
        {"podRef": {"name": "p"}},
        {"aicoreAlloc": 2.5},
    ],
)
def test_the_schema_rejects_nonsense(validator: jsonschema.Draft7Validator, spec: dict[str, Any]) -> None:
    body = with_spec(**spec)
    assert list(validator.iter_errors(body)), f"schema accepted {body['spec']}"


def test_a_claim_without_spec_is_rejected(validator: jsonschema.Draft7Validator) -> None:
    assert list(validator.iter_errors({"apiVersion": "flexnpu.io/v1alpha1", "kind": "VNpuClaim"}))
