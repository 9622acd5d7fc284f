"""``flexnpu deviceplugin`` as a process: flags, one-line errors, serving the stub kubelet, clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from dp_fakes import eight_cards, write_inventory

from flexnpu import names
from flexnpu.deviceplugin.main import load
from flexnpu_testsupport.kubeletstub import StubKubelet


def flexnpu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flexnpu.cli", "deviceplugin", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help() -> None:
    result = flexnpu("--help")
    assert result.returncode == 0
    for flag in (
        "--kubelet-dir",
        "--node-name",
        "--npu-smi",
        "--inventory",
        "--units-per-card",
        "--oversubscription",
        "--kubeconfig",
    ):
        assert flag in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--npu-smi", "x", "--inventory", "y"], "not allowed with argument"),
        (["--units-per-card", "0", "--no-kubernetes"], "units_per_card=0"),
        (["--oversubscription", "0.5", "--no-kubernetes"], "oversubscription=0.5"),
        (["--units-per-card", "ten"], "invalid int value"),
        ([], "node_name"),
    ],
)
def test_bad_flags_exit_with_one_line(args: list[str], message: str) -> None:
    result = flexnpu(*args)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr


def test_settings_layers() -> None:
    settings = load(["--node-name", "n1", "--units-per-card", "20", "--inventory", "/x.yaml"])
    assert (settings.node_name, settings.units_per_card, str(settings.inventory)) == ("n1", 20, "/x.yaml")
    assert settings.socket_path == Path(names.KUBELET_DEVICE_PLUGIN_DIR) / names.PLUGIN_SOCKET_NAME


def test_malformed_inventory_exits_with_one_line(tmp_path: Path, kubelet: StubKubelet) -> None:
    (tmp_path / "bad.yaml").write_text("cards: [{index: 0}]")
    result = flexnpu(
        "--inventory",
        str(tmp_path / "bad.yaml"),
        "--no-kubernetes",
        "--kubelet-dir",
        str(kubelet.directory),
        "--metrics-port",
        "0",
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("flexnpu deviceplugin: inventory file")
    assert "cards[0].model" in result.stderr


def test_process_serves_kubelet_and_stops_cleanly(tmp_path: Path, kubelet: StubKubelet) -> None:
    inventory = write_inventory(tmp_path / "inventory.yaml", eight_cards())
    preload = tmp_path / "host" / "ld.so.preload"
    env = {
        **os.environ,
        "FLEXNPU_DEVICEPLUGIN_PRELOAD_HOST_FILE": str(preload),
        "FLEXNPU_DEVICEPLUGIN_INTERPOSER_POD_PATH": "/opt/flexnpu/libflexnpu.so",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flexnpu.cli",
            "deviceplugin",
            "--inventory",
            str(inventory),
            "--no-kubernetes",
            "--kubelet-dir",
            str(kubelet.directory),
            "--metrics-port",
            "0",
            "--units-per-card",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        kubelet.wait_for_registration(timeout=30)
        assert len(kubelet.devices) == 40
        _, response = kubelet.allocate_units(5)
        assert dict(response.envs)[names.ENV_UNITS_PER_CARD] == "5"
        assert {m.container_path: m.host_path for m in response.mounts}["/etc/ld.so.preload"] == str(preload)
        assert preload.read_text() == "/opt/flexnpu/libflexnpu.so\n"  # written before the plugin registered
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert not (kubelet.directory / names.PLUGIN_SOCKET_NAME).exists()
