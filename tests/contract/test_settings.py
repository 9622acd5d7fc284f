"""Settings load flags > environment > file, coerce types, and name the key and value they reject."""

from __future__ import annotations

import dataclasses
import enum
import logging
from pathlib import Path

import pytest

from flexnpu.errors import ConfigError
from flexnpu.settings import describe, load_settings, setting


class Mode(enum.StrEnum):
    FAST = "fast"
    SAFE = "safe"


@dataclasses.dataclass(frozen=True)
class Example:
    port: int = setting(8080, "port to listen on")
    ratio: float = setting(1.0, "a ratio")
    verbose: bool = setting(False, "talk more")
    mode: Mode = setting(Mode.SAFE, "how to run")
    tags: tuple[str, ...] = setting((), "labels")
    token: str = setting("", "secret token", secret=True)
    path: Path | None = setting(None, "optional file")

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError("port", self.port, "must be in 1..65535")


def test_defaults() -> None:
    assert load_settings(Example) == Example()


def test_layers_flags_over_env_over_file(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("port: 1000\nratio: 0.5\nverbose: true\n")
    env = {"FLEXNPU_PORT": "2000", "FLEXNPU_MODE": "fast"}
    settings = load_settings(Example, flags={"port": 3000, "ratio": None}, env=env, file=file)
    assert (settings.port, settings.ratio, settings.verbose, settings.mode) == (3000, 0.5, True, Mode.FAST)


def test_lists_and_optionals_from_text() -> None:
    settings = load_settings(Example, env={"FLEXNPU_TAGS": "a, b,,c", "FLEXNPU_PATH": "/x"})
    assert settings.tags == ("a", "b", "c")
    assert settings.path == Path("/x")


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"FLEXNPU_PORT": "eighty"}, "FLEXNPU_PORT"),
        ({"FLEXNPU_VERBOSE": "maybe"}, "FLEXNPU_VERBOSE"),
        ({"FLEXNPU_MODE": "turbo"}, "FLEXNPU_MODE"),
        ({"FLEXNPU_PORT": "70000"}, "port"),
        ({"FLEXNPU_RATIO": "nan"}, "FLEXNPU_RATIO"),
        ({"FLEXNPU_RATIO": "-inf"}, "FLEXNPU_RATIO"),
        ({"FLEXNPU_RATIO": "1e400"}, "FLEXNPU_RATIO"),
    ],
)
def test_errors_name_key_and_value(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(Example, env=env)
    assert info.value.field == key
    assert str(next(iter(env.values()))) in str(info.value)


def test_file_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(Example, file=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(Example, file=bad)
    odd = tmp_path / "odd.yaml"
    odd.write_text("port: 9\nbogus: 1\n")
    with caplog.at_level(logging.WARNING):
        assert load_settings(Example, file=odd).port == 9
    assert "bogus" in caplog.text


def test_describe_masks_secrets() -> None:
    text = describe(load_settings(Example, flags={"token": "s3cret"}))
    assert "token=***" in text and "s3cret" not in text and "port=8080" in text
