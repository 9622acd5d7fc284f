"""``flexnpu operator``: help, bad flags and bad settings end with one line naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexnpu.cli import main as flexnpu
from flexnpu.operator.settings import OperatorSettings
from flexnpu.settings import load_settings


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        flexnpu(["operator", "--help"])
    assert done.value.code == 0
    assert "--standalone" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("daemon_port: 0\n", "daemon_port"),
        ("resync_interval: -1\n", "resync_interval"),
        ("daemon_selector: 'app!=x'\n", "daemon_selector"),
        ("daemon_address: node-ip\n", "daemon_address"),
    ],
)
def test_bad_settings_exit_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, needle: str
) -> None:
    config = tmp_path / "operator.yaml"
    config.write_text(content, encoding="utf-8")
    assert flexnpu(["operator", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_settings_layers(tmp_path: Path) -> None:
    config = tmp_path / "operator.yaml"
    config.write_text("daemonPort: 9000\nresync_interval: 10\n", encoding="utf-8")
    settings = load_settings(
        OperatorSettings,
        flags={"resync_interval": 3},
        file=config,
        env={"FLEXNPU_OPERATOR_DAEMON_TOKEN": "s3cret"},
        env_prefix="FLEXNPU_OPERATOR_",
    )
    assert (settings.daemon_port, settings.resync_interval, settings.token()) == (9000, 3.0, "s3cret")


def test_token_file_is_read_each_time(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("one\n", encoding="utf-8")
    settings = OperatorSettings(daemon_token_file=token)
    assert settings.token() == "one"
    token.write_text("two", encoding="utf-8")
    assert settings.token() == "two"


@pytest.mark.parametrize(
    ("given", "peering", "standalone", "expected"),
    [
        (None, "flexnpu", False, 7),  # peering: drawn, so that replicas of one Deployment differ
        (5, "flexnpu", False, 5),  # given: kept
        (None, None, True, None),  # standalone: kopf's default
        (None, None, False, None),  # no peering name: kopf's default
    ],
)
def test_replica_priority(given: int | None, peering: str | None, standalone: bool, expected: int | None) -> None:
    from flexnpu.operator.main import replica_priority

    assert replica_priority(given, peering, standalone, draw=lambda low, high: 7) == expected
