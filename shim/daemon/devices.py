"""The cards flexnpud manages, from ``[flexnpu] devices``: ``auto`` asks npu-smi, ``sim:<model>x<count>`` simulates.

Simulated cards get uuids ``sim-<model>-<index>`` so that registrations persisted by one run still find their
card in the next. Any failure (a malformed value, npu-smi missing or failing, no card at all) is a ConfigError
naming ``[flexnpu] devices``: the daemon cannot do anything useful without cards.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from typing import Final

from flexnpu.cards import Card, card_model
from flexnpu.errors import ConfigError, ValidationError
from flexnpu.npusmi import parse_npu_smi_info

DEVICES_KEY: Final = "[flexnpu] devices"
MAX_SIM_CARDS: Final = 64
NPU_SMI_TIMEOUT_S: Final = 30.0
_SIM = re.compile(r"^sim:(?P<model>[A-Za-z0-9]+)x(?P<count>\d+)$")

NpuSmiParser = Callable[[str], Sequence[Card]]


def resolve_devices(spec: str, npu_smi: str = "npu-smi", parser: NpuSmiParser | None = None) -> list[Card]:
    """The cards ``spec`` names; a ConfigError naming ``[flexnpu] devices`` when there are none."""
    if spec == "auto":
        cards = list((parser or npu_smi_parser())(run_npu_smi(npu_smi)))
        if not cards:
            raise ConfigError(DEVICES_KEY, spec, f"no card found in the output of {npu_smi!r} info")
        return cards
    return sim_cards(spec)


def sim_cards(spec: str) -> list[Card]:
    """``sim:910B3x8``: eight simulated 910B3 cards, indices 0..7."""
    match = _SIM.match(spec.strip())
    if match is None:
        raise ConfigError(DEVICES_KEY, spec, "must be auto or sim:<model>x<count> (e.g. sim:910B3x8)")
    try:
        model = card_model(match["model"], DEVICES_KEY)
    except ValidationError as exc:
        raise ConfigError(DEVICES_KEY, spec, exc.reason) from exc
    count = int(match["count"])
    if not 1 <= count <= MAX_SIM_CARDS:
        raise ConfigError(DEVICES_KEY, spec, f"card count must be in 1..{MAX_SIM_CARDS} (no card found)")
    return [Card.of_model(model.name, index=i, uuid=f"sim-{model.name.lower()}-{i}") for i in range(count)]


def run_npu_smi(command: str) -> str:
    """The output of ``<command> info``; a ConfigError naming ``[flexnpu] devices`` when it cannot be had."""
    argv = [*shlex.split(command), "info"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=NPU_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(DEVICES_KEY, "auto", f"cannot run {shlex.join(argv)!r} ({exc})") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise ConfigError(
            DEVICES_KEY,
            "auto",
            f"{shlex.join(argv)!r} exited with {done.returncode}" + (f": {detail[-1]}" if detail else ""),
        )
    return done.stdout


def npu_smi_parser() -> NpuSmiParser:
    """The project's one npu-smi parser (flexnpu.npusmi, shared with the device plugin)."""
    return _checked(parse_npu_smi_info)


def _checked(parse: NpuSmiParser) -> NpuSmiParser:
    def run(text: str) -> Sequence[Card]:
        try:
            return parse(text)
        except ValidationError as exc:
            raise ConfigError(DEVICES_KEY, "auto", f"cannot parse npu-smi output ({exc})") from exc

    return run
