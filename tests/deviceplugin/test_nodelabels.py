"""Node labels (issue 10 case 11): card model, card count and units per card on the device plugin's node.

The pure mapping from cards to labels, hostile card models included, and the adapter writing them on kmock (the
API emulator): only flexnpu's keys change, unchanged labels are not written again, a refused patch is retried at
the next scan instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dp_fakes import NODE, KubeEmulator

from flexnpu.cards import Card
from flexnpu.deviceplugin.adapters.nodelabels import NodeLabeller
from flexnpu.deviceplugin.core.nodelabels import (
    LABEL_NPU_COUNT,
    LABEL_NPU_MODEL,
    LABEL_UNITS_PER_CARD,
    is_label_value,
    node_labels,
)
from flexnpu.deviceplugin.main import label_node
from flexnpu.names import DOMAIN
from flexnpu.units import UnitsConfig


def cards(*models: str) -> tuple[Card, ...]:
    return tuple(
        Card(uuid=f"npu-{i}", index=i, model=model, aicores=20, hbm_mib=65536) for i, model in enumerate(models)
    )


def test_keys_are_flexnpus() -> None:
    assert {LABEL_NPU_MODEL, LABEL_NPU_COUNT, LABEL_UNITS_PER_CARD} == {
        f"{DOMAIN}/npu-model",
        f"{DOMAIN}/npu-count",
        f"{DOMAIN}/vnpu-units-per-card",
    }


def test_eight_cards_of_one_model() -> None:
    assert node_labels(cards(*["910B3"] * 8), UnitsConfig(units_per_card=10)) == {
        LABEL_NPU_MODEL: "910B3",
        LABEL_NPU_COUNT: "8",
        LABEL_UNITS_PER_CARD: "10",
    }


def test_units_per_card_is_u_not_the_oversubscribed_count() -> None:
    labels = node_labels(cards("910B4"), UnitsConfig(units_per_card=100, oversubscription=2.0))
    assert labels[LABEL_UNITS_PER_CARD] == "100"


def test_mixed_models_remove_the_model_label() -> None:
    # A selector on one model must not match a node that may place the pod on a card of another.
    labels = node_labels(cards("910B3", "910B4"), UnitsConfig())
    assert labels[LABEL_NPU_MODEL] is None and labels[LABEL_NPU_COUNT] == "2"


@pytest.mark.parametrize("model", ["910B3; rm -rf /", "-910B", "910B.", "x" * 64, "9 10", "910B\n", "Ascend/910"])
def test_a_model_that_is_no_label_value_removes_the_label(model: str) -> None:
    assert not is_label_value(model)
    assert node_labels(cards(model, model), UnitsConfig())[LABEL_NPU_MODEL] is None


@pytest.mark.parametrize("model", ["910B3", "910B1", "Ascend910B-2", "a", "x" * 63, "A_b.c-d"])
def test_valid_models_are_kept(model: str) -> None:
    assert node_labels(cards(model), UnitsConfig())[LABEL_NPU_MODEL] == model


def test_no_card_left() -> None:
    assert node_labels((), UnitsConfig()) == {LABEL_NPU_MODEL: None, LABEL_NPU_COUNT: "0", LABEL_UNITS_PER_CARD: "10"}


def node_labels_on(k8s: KubeEmulator, name: str = NODE) -> dict[str, str]:
    node: dict[str, Any] = k8s.request("GET", f"/api/v1/nodes/{name}")
    return dict(node["metadata"].get("labels") or {})


@pytest.fixture
def labeller(k8s: KubeEmulator, tmp_path: Path) -> NodeLabeller:
    return NodeLabeller.connect(NODE, k8s.kubeconfig(tmp_path))


def test_labels_are_written_beside_the_others(k8s: KubeEmulator, labeller: NodeLabeller) -> None:
    k8s.create_node()
    k8s.request("PATCH", f"/api/v1/nodes/{NODE}", {"metadata": {"labels": {"accelerator": "huawei-Ascend910"}}})
    assert labeller.publish(node_labels(cards("910B3", "910B3"), UnitsConfig()))
    assert node_labels_on(k8s) == {
        "accelerator": "huawei-Ascend910",
        LABEL_NPU_MODEL: "910B3",
        LABEL_NPU_COUNT: "2",
        LABEL_UNITS_PER_CARD: "10",
    }
    # A card of another model joins: the model label goes, the count follows.
    assert labeller.publish(node_labels(cards("910B3", "910B3", "910B4"), UnitsConfig()))
    assert node_labels_on(k8s) == {"accelerator": "huawei-Ascend910", LABEL_NPU_COUNT: "3", LABEL_UNITS_PER_CARD: "10"}
    labeller.close()


def test_unchanged_labels_are_not_written_again(k8s: KubeEmulator, labeller: NodeLabeller) -> None:
    k8s.create_node()
    labels = node_labels(cards("910B3"), UnitsConfig())
    assert labeller.publish(labels)
    k8s.request("PATCH", f"/api/v1/nodes/{NODE}", {"metadata": {"labels": {LABEL_NPU_COUNT: None}}})
    assert labeller.publish(labels)  # the same labels: no request, so the hand-removed label stays removed
    assert LABEL_NPU_COUNT not in node_labels_on(k8s)
    assert labeller.publish(node_labels(cards("910B3", "910B3"), UnitsConfig()))
    assert node_labels_on(k8s)[LABEL_NPU_COUNT] == "2"


def test_a_refused_patch_is_retried_not_raised(
    k8s: KubeEmulator, labeller: NodeLabeller, caplog: pytest.LogCaptureFixture
) -> None:
    labels = node_labels(cards("910B3"), UnitsConfig())
    assert labeller.publish(labels) is False  # no Node object yet: 404
    assert "node labels not written" in caplog.text and labeller.published is None
    k8s.create_node()
    assert labeller.publish(labels) is True
    assert node_labels_on(k8s)[LABEL_NPU_MODEL] == "910B3"


def test_an_unreachable_api_server_is_retried_not_raised(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n",
        encoding="utf-8",
    )
    labeller = NodeLabeller.connect(NODE, config)
    assert labeller.publish({LABEL_NPU_COUNT: "1"}) is False
    labeller.close()


@dataclass
class _Plugin:
    cards: tuple[Card, ...]
    units: UnitsConfig


def test_the_device_plugin_labels_its_node_from_its_cards(k8s: KubeEmulator, labeller: NodeLabeller) -> None:
    k8s.create_node()
    plugin = _Plugin(cards("910B2", "910B2", "910B2", "910B2"), UnitsConfig(units_per_card=20))
    label_node(labeller, plugin)  # type: ignore[arg-type]
    assert node_labels_on(k8s) == {LABEL_NPU_MODEL: "910B2", LABEL_NPU_COUNT: "4", LABEL_UNITS_PER_CARD: "20"}
    label_node(None, plugin)  # type: ignore[arg-type]  # --no-kubernetes: nothing to do
