"""flexnpud.conf: defaults, every key's bounds, unknown keys, the token decision, and the devices key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from daemon_helpers import write_config

from flexnpu.errors import ConfigError
from flexnpu.shim.daemon import devices
from flexnpu.shim.daemon.config import (
    DEFAULT_PORT,
    DaemonSettings,
    describe_settings,
    is_loopback,
    load_config,
    read_token,
    token_required,
)
from flexnpu.shim.daemon.devices import resolve_devices, sim_cards
from flexnpu.shim.daemon.main import main

SHIPPED = Path(devices.__file__).with_name("flexnpud.conf")


def test_shipped_example_holds_the_defaults() -> None:
    settings, warnings = load_config(SHIPPED)
    assert settings == DaemonSettings()
    assert warnings == []
    assert settings.port == DEFAULT_PORT and settings.host == "127.0.0.1"


def test_every_key_is_read(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "server": {"host": "10.0.0.5", "port": 9000, "auth": "token"},
            "logger": {"log_level": "debug", "log_file": "/tmp/x.log", "log_file_size": 3, "log_file_archive_count": 0},
            "flexnpu": {
                "schedule_cycle": 500,
                "persistent_file_dir": "/s",
                "share_in_idle": "true",
                "devices": "sim:910B4x2",
                "npu_smi": "/bin/npu-smi",
                "oversubscription": 1.5,
                "policy": "ops",
                "token_file": "/t",
                "socket_dir": "/d",
            },
            "ticker": {"ticker_interval": 2000, "quota": 16},
        },
    )
    settings, _ = load_config(path)
    assert settings == DaemonSettings(
        host="10.0.0.5",
        port=9000,
        auth="token",
        log_level="DEBUG",
        log_file="/tmp/x.log",
        log_file_size=3,
        log_file_archive_count=0,
        schedule_cycle=500,
        persistent_file_dir="/s",
        share_in_idle=True,
        devices="sim:910B4x2",
        npu_smi="/bin/npu-smi",
        oversubscription=1.5,
        policy="ops",
        token_file="/t",
        socket_dir="/d",
        ticker_interval=2000,
        quota=16,
    )
    assert settings.registrations_path == Path("/s/registrations.json")
    assert settings.socket_path == Path("/d/grant.sock")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("server", "port", "0"),
        ("server", "port", "65536"),
        ("server", "port", "http"),
        ("server", "host", ""),
        ("server", "auth", "none"),
        ("logger", "log_level", "loud"),
        ("logger", "log_file_size", "0"),
        ("logger", "log_file_archive_count", "-1"),
        ("flexnpu", "schedule_cycle", "99"),
        ("flexnpu", "schedule_cycle", "1.5"),
        ("flexnpu", "share_in_idle", "maybe"),
        ("flexnpu", "oversubscription", "0.5"),
        ("flexnpu", "oversubscription", "nan"),
        ("flexnpu", "oversubscription", "17"),
        ("flexnpu", "policy", "fair"),
        ("flexnpu", "persistent_file_dir", ""),
        ("flexnpu", "devices", ""),
        ("ticker", "quota", "0"),
        ("ticker", "quota", "17"),
        ("ticker", "quota", "ten"),
        ("ticker", "ticker_interval", "5"),
    ],
)
def test_bad_values_name_section_and_key(tmp_path: Path, section: str, key: str, value: str) -> None:
    path = write_config(tmp_path, {section: {key: value}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.field == f"[{section}] {key}"
    assert str(info.value).startswith(f"[{section}] {key}=")


def test_unknown_keys_and_sections_are_warned_about(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"server": {"prot": 1}, "ticker": {"quota": 4}, "extra": {"a": 1}})
    settings, warnings = load_config(path)
    assert settings.quota == 4
    assert any("[server] prot" in w for w in warnings)
    assert any("[extra]" in w for w in warnings)
    assert len(warnings) == 2


@pytest.mark.parametrize("text", ["no section header\n", "[server]\nport = 1\nport = 2\n", "[server\n"])
def test_malformed_file_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.conf"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"bad\.conf"):
        load_config(path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.conf.*cannot be read"):
        load_config(tmp_path / "nope.conf")


@pytest.mark.parametrize(
    ("host", "auth", "required"),
    [
        ("127.0.0.1", "auto", False),
        ("127.0.0.2", "auto", False),
        ("::1", "auto", False),
        ("[::1]", "auto", False),
        ("localhost", "auto", False),
        ("127.0.0.1", "token", True),
        ("0.0.0.0", "auto", True),
        ("::", "auto", True),
        ("10.1.2.3", "auto", True),
        ("node-7.example", "auto", True),
    ],
)
def test_token_required_off_loopback(host: str, auth: str, required: bool) -> None:
    assert token_required(host, auth) is required
    assert is_loopback(host) is (required is False or (auth == "token" and host == "127.0.0.1"))


def test_no_token_on_a_network_address_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        read_token(DaemonSettings(host="0.0.0.0"))
    assert info.value.field == "[flexnpu] token_file"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="holds no token"):
        read_token(DaemonSettings(host="0.0.0.0", token_file=str(empty)))
    with pytest.raises(ConfigError, match="cannot be read"):
        read_token(DaemonSettings(token_file=str(tmp_path / "missing")))
    good = tmp_path / "token"
    good.write_text("s3cret\n")
    assert read_token(DaemonSettings(host="0.0.0.0", token_file=str(good))) == "s3cret"
    assert read_token(DaemonSettings()) == ""


def test_describe_names_every_key() -> None:
    text = describe_settings(DaemonSettings())
    assert all(f"={getattr(DaemonSettings(), f.name)}" in text for f in dataclasses.fields(DaemonSettings))
    assert "[ticker] quota=10" in text and "[server] port=8765" in text


@pytest.mark.parametrize(
    ("spec", "count", "model", "hbm"),
    [
        ("sim:910B3x8", 8, "910B3", 65536),
        ("sim:910B4x1", 1, "910B4", 32768),
        ("sim:910B1x64", 64, "910B1", 65536),
    ],
)
def test_sim_devices(spec: str, count: int, model: str, hbm: int) -> None:
    cards = resolve_devices(spec)
    assert [c.index for c in cards] == list(range(count))
    assert {c.model for c in cards} == {model} and {c.hbm_mib for c in cards} == {hbm}
    assert len({c.uuid for c in cards}) == count
    assert sim_cards(spec) == cards  # stable uuids: persisted registrations find their card again


@pytest.mark.parametrize("spec", ["sim:910B3x0", "sim:910B3x65", "sim:910B9x2", "sim:910B3", "910B3x8", "autox"])
def test_bad_devices_name_the_key(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_devices(spec)
    assert info.value.field == "[flexnpu] devices"


def test_auto_devices_from_npu_smi(fake_npu_smi: Path) -> None:
    cards = resolve_devices("auto", str(fake_npu_smi))
    assert [c.index for c in cards] == list(range(8))
    assert {c.model for c in cards} == {"910B3"}
    assert cards[0].hbm_mib == 65536


def test_auto_without_cards_or_npu_smi_names_the_key(tmp_path: Path) -> None:
    empty = tmp_path / "npu-smi-empty"
    empty.write_text("#!/bin/sh\necho 'No NPU device found'\n")
    empty.chmod(0o755)
    failing = tmp_path / "npu-smi-failing"
    failing.write_text("#!/bin/sh\necho 'dcmi error' >&2\nexit 4\n")
    failing.chmod(0o755)
    for command in (str(empty), str(failing), str(tmp_path / "missing-npu-smi")):
        with pytest.raises(ConfigError) as info:
            resolve_devices("auto", command)
        assert info.value.field == "[flexnpu] devices"


@pytest.mark.parametrize(
    ("sections", "named"),
    [
        ({"ticker": {"quota": 17}}, "[ticker] quota=17"),
        ({"server": {"port": "x"}}, "[server] port='x'"),
        ({"flexnpu": {"devices": "sim:910B3x0"}}, "[flexnpu] devices"),
        ({"server": {"host": "0.0.0.0"}, "flexnpu": {"devices": "sim:910B3x1"}}, "[flexnpu] token_file"),
    ],
)
def test_main_exits_non_zero_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sections: dict[str, dict[str, object]], named: str
) -> None:
    assert main(["--config", str(write_config(tmp_path, sections))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and err.startswith("flexnpu daemon: ")
