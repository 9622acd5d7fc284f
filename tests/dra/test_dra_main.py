"""``flexnpu dra-plugin``: its help, and a bad setting named on one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import grpc
import pytest
import yaml

from flexnpu import names
from flexnpu.cards import Card
from flexnpu.dra.core.slices import SlicePlan
from flexnpu.dra.main import build, load, main, slice_loop
from flexnpu.dra.slices import SliceError, SlicePublisher
from flexnpu.errors import ValidationError
from flexnpu.protos import pluginregistration_v1_pb2 as reg
from flexnpu.protos import pluginregistration_v1_pb2_grpc as reg_grpc


def test_help_lists_the_kubelet_paths() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "flexnpu.cli", "dra-plugin", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--registration-socket" in out and "--cdi-dir" in out


def test_a_missing_node_name_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLEXNPU_DRA_NODE_NAME", raising=False)
    assert main([]) == 2
    assert "node_name" in capsys.readouterr().err


def test_a_bad_units_per_card_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--node-name", "n", "--units-per-card", "0"]) == 2
    assert "units_per_card" in capsys.readouterr().err


def test_build_serves_the_registration_of_the_configured_sockets(tmp_path: Path) -> None:
    inventory = tmp_path / "cards.yaml"
    inventory.write_text(yaml.safe_dump({"cards": [{"index": 0, "model": "910B3", "bus_id": "0000:C1:00.0"}]}))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    root = Path(tempfile.mkdtemp(prefix="fdra-", dir="/tmp"))
    settings = load(
        [
            "--node-name=node-a",
            f"--inventory={inventory}",
            f"--kubeconfig={kubeconfig}",
            f"--registration-socket={root / 'reg.sock'}",
            f"--plugin-socket={root / 'dra.sock'}",
            f"--checkpoint={root / 'checkpoint.json'}",
            f"--cdi-dir={root / 'cdi'}",
            f"--preload-host-file={root / 'preload' / 'ld.so.preload'}",
            "--interposer-host-path=/opt/flexnpu/libflexnpu.so",
        ]
    )
    servers, _ = build(settings)
    servers.start()
    try:
        with grpc.insecure_channel(f"unix://{root / 'reg.sock'}") as channel:
            info = reg_grpc.RegistrationStub(channel).GetInfo(reg.InfoRequest(), timeout=10)
        assert info.endpoint == str(root / "dra.sock")
        # The CDI specs mount this file onto /etc/ld.so.preload: a runtime refuses a missing mount source.
        preload = root / "preload" / "ld.so.preload"
        assert preload.read_text() == names.INTERPOSER_POD_PATH + "\n"
        assert oct(preload.stat().st_mode & 0o777) == oct(0o644)
    finally:
        servers.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert not (root / "reg.sock").exists()


class ScriptedPublisher:
    """Answers each publish with the next scripted outcome (an exception to raise or a plan); the last sets stop."""

    def __init__(self, outcomes: list[Exception | SlicePlan], stop: threading.Event) -> None:
        self.outcomes = outcomes
        self.stop = stop
        self.seen: list[int] = []

    def publish(self, cards: Sequence[Card]) -> SlicePlan:
        self.seen.append(len(cards))
        outcome = self.outcomes.pop(0)
        if not self.outcomes:
            self.stop.set()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def test_the_slice_loop_retries_a_refused_publish_and_keeps_going_after_a_bad_inventory() -> None:
    stop = threading.Event()
    outcomes: list[Exception | SlicePlan] = [
        SliceError("conflict", 409),
        ValidationError("cards", "[]", "no card"),
        SlicePlan(create=[{}]),
    ]
    publisher = ScriptedPublisher(outcomes, stop)
    cards = [Card.of_model("910B3", 0, "u0")]
    loop = threading.Thread(
        target=slice_loop,
        args=(cast(SlicePublisher, publisher), lambda: cards, 0.01, stop),
        kwargs={"retry": 0.01},
        daemon=True,
    )
    loop.start()
    loop.join(timeout=30)
    assert not loop.is_alive(), "the loop did not return once stop was set"
    assert publisher.seen == [1, 1, 1]
