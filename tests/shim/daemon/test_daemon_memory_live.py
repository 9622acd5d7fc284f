"""The memory watch inside a real flexnpud: config keys, metrics, ``flexnpu status``, logs, a failing npu-smi."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from daemon_helpers import NPU_SMI_OUTPUT, Daemon, daemon_sections, free_port, http_request, run_cli, write_config

from flexnpu.errors import ConfigError
from flexnpu.shim.daemon.config import DaemonSettings, load_config
from flexnpu.shim.grant import shm
from flexnpu.shim.status import memory_cell
from flexnpu_testsupport.waiting import wait_for

MIB = 1 << 20
BODY = {"flexnpu_id": "job-1", "entity": "train", "npu": 0, "chip": 0, "aicore_alloc": 2, "memory_alloc": 16}


def test_memory_keys_default_and_bounds(tmp_path: Path) -> None:
    assert DaemonSettings().enforce_memory == "report" and DaemonSettings().memory_watch_interval == 5.0
    settings, warnings = load_config(
        write_config(tmp_path, {"flexnpu": {"enforce_memory": "KILL", "memory_watch_interval": 0.5}})
    )
    assert (settings.enforce_memory, settings.memory_watch_interval, warnings) == ("kill", 0.5, [])
    assert (DaemonSettings().memory_source, DaemonSettings().nvml_library) == ("auto", "libnvidia-ml.so.1")
    settings, _ = load_config(
        write_config(tmp_path, {"flexnpu": {"memory_source": "NVML", "nvml_library": "/opt/nvidia/libnvidia-ml.so.1"}})
    )
    assert (settings.memory_source, settings.nvml_library) == ("nvml", "/opt/nvidia/libnvidia-ml.so.1")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("enforce_memory", "evict"),
        ("enforce_memory", ""),
        ("memory_watch_interval", "0"),
        ("memory_watch_interval", "nan"),
        ("memory_watch_interval", "inf"),
        ("memory_watch_interval", "5s"),
        ("memory_source", "dcgm"),
        ("memory_source", ""),
        ("nvml_library", ""),
    ],
)
def test_bad_memory_keys_name_the_key(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"[flexnpu] {key}")):
        load_config(write_config(tmp_path, {"flexnpu": {key: value}}))


@pytest.mark.parametrize(
    ("view", "cell"),
    [
        ({"memory_alloc": 16}, "?/16"),
        ({"memory_alloc": 16, "memory_cap_bytes": 16 * MIB, "memory_used_bytes": None}, "?/16"),
        ({"memory_alloc": 16, "memory_cap_bytes": 16 * MIB, "memory_used_bytes": 8 * MIB}, "8/16"),
        (
            {"memory_alloc": 16, "memory_cap_bytes": 16 * MIB, "memory_used_bytes": 40 * MIB, "memory_over_cap": True},
            "40/16 OVER by 24",
        ),
    ],
)
def test_status_memory_cell(view: dict[str, object], cell: str) -> None:
    assert memory_cell(view) == cell


def metric(url: str, name: str, flexnpu_id: str) -> float | None:
    text = http_request(url + "/metrics").body
    match = re.search(rf'^{name}{{[^}}]*flexnpu_id="{flexnpu_id}"[^}}]*}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_a_pod_past_its_cap_shows_in_log_metrics_and_status(
    tmp_path: Path, short_dir: Path, daemons: list[Daemon]
) -> None:
    port, log = free_port(), tmp_path / "daemon.log"
    sections = daemon_sections(tmp_path / "state", short_dir, port, memory_watch_interval=0.1, enforce_memory="kill")
    daemon = Daemon(write_config(tmp_path, sections), port, log)
    daemons.append(daemon)
    daemon.start()
    assert daemon.request("POST", "/device/register", BODY).body["result"] == "created"
    slot = shm.Slot.open(str(short_dir / shm.slot_name("job-1")))
    try:
        slot.set("mem_used_bytes", 8 * MIB)
        wait_for("used memory in /metrics", lambda: metric(daemon.url, "flexnpu_memory_used_bytes", "job-1") == 8 * MIB)
        assert metric(daemon.url, "flexnpu_memory_over_cap", "job-1") == 0
        assert metric(daemon.url, "flexnpu_memory_cap_bytes", "job-1") == 16 * MIB

        slot.set("mem_used_bytes", 40 * MIB)  # what the pod writes: the daemon only reports it (no pid to kill)
        wait_for("over cap in /metrics", lambda: metric(daemon.url, "flexnpu_memory_over_cap", "job-1") == 1)
        done = run_cli("status", "--url", daemon.url)
        assert done.returncode == 0, done.stderr
        assert "40/16 OVER by 24" in next(line for line in done.stdout.splitlines() if "job-1" in line)
        info = daemon.request("GET", "/device/flexnpu-info").body["registrations"][0]
        assert (info["memory_used_bytes"], info["memory_cap_bytes"], info["memory_over_cap"]) == (
            40 * MIB,
            16 * MIB,
            True,
        )

        slot.set("mem_used_bytes", 2 * MIB)
        wait_for("back under cap", lambda: metric(daemon.url, "flexnpu_memory_over_cap", "job-1") == 0)
    finally:
        slot.close()
    assert daemon.stop() == 0
    text = log.read_text(encoding="utf-8")
    assert text.count("event=MemoryOverCap ") == 1 and text.count("event=MemoryUnderCap ") == 1
    assert "flexnpu_id=job-1 pod_uid=- npu=0 chip=0 used_mib=40.0 cap_mib=16.0 over_mib=24.0 action=kill" in text


def test_nvml_that_cannot_be_loaded_is_logged_once_and_the_daemon_serves(
    tmp_path: Path, short_dir: Path, daemons: list[Daemon]
) -> None:
    port, log = free_port(), tmp_path / "daemon.log"
    missing = tmp_path / "libnvidia-ml.so.1"
    sections = daemon_sections(
        tmp_path / "state", short_dir, port, memory_source="nvml", nvml_library=missing, memory_watch_interval=0.1
    )
    daemon = Daemon(write_config(tmp_path, sections), port, log)
    daemons.append(daemon)
    daemon.start()
    assert daemon.request("POST", "/device/register", BODY).body["result"] == "created"
    wait_for("the failure logged", lambda: "memory caps are not watched" in log.read_text(encoding="utf-8"))
    assert daemon.request("GET", "/service/health").status == 200
    assert daemon.request("GET", "/device/flexnpu-info").body["registrations"][0].get("memory_used_bytes") is None
    assert daemon.stop() == 0
    text = log.read_text(encoding="utf-8")
    assert text.count("memory caps are not watched") == 1 and f"cannot load {missing}" in text


def test_npu_smi_failing_after_start_never_stops_the_daemon(
    tmp_path: Path, short_dir: Path, daemons: list[Daemon]
) -> None:
    output = tmp_path / "out.txt"
    output.write_text(NPU_SMI_OUTPUT.read_text(encoding="utf-8"), encoding="utf-8")
    script = tmp_path / "npu-smi"
    script.write_text(f"#!/bin/sh\ncat '{output}'\n", encoding="utf-8")
    script.chmod(0o755)
    port, log = free_port(), tmp_path / "daemon.log"
    sections = daemon_sections(
        tmp_path / "state", short_dir, port, devices="auto", npu_smi=script, memory_watch_interval=0.1
    )
    daemon = Daemon(write_config(tmp_path, sections), port, log)
    daemons.append(daemon)
    daemon.start()
    assert (
        daemon.request("POST", "/device/register", {**BODY, "pod_uid": "0b9c4e1a-1111-4a2b-8c3d-aaaaaaaaaaaa"}).body[
            "result"
        ]
        == "created"
    )
    wait_for("a first round", lambda: metric(daemon.url, "flexnpu_memory_used_bytes", "job-1") == 0)
    output.write_text("| garbage |\n", encoding="utf-8")
    wait_for("the failure logged", lambda: "memory caps are not watched" in log.read_text(encoding="utf-8"))
    assert daemon.request("GET", "/service/health").status == 200
    output.write_text(NPU_SMI_OUTPUT.read_text(encoding="utf-8"), encoding="utf-8")
    wait_for("the recovery logged", lambda: "source readable again" in log.read_text(encoding="utf-8"))
    assert daemon.stop() == 0
    assert log.read_text(encoding="utf-8").count("memory caps are not watched") == 1
