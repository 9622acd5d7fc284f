"""flexnpud as a real process: restart restores registrations, corrupt state, bearer token, CLI failures, status."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from daemon_helpers import Daemon, daemon_sections, free_port, http_request, run_cli, write_config

from flexnpu.shim.runtime.grant_client import GrantClient
from flexnpu_testsupport.waiting import wait_for

BODY = {"flexnpu_id": "job-1", "entity": "train", "npu": 3, "chip": 0, "aicore_alloc": 2, "memory_alloc": 16384}


def start(daemons: list[Daemon], config: Path, port: int, log: Path) -> Daemon:
    daemon = Daemon(config, port, log)
    daemons.append(daemon)
    return daemon.start()


def test_registrations_survive_a_killed_daemon(
    tmp_path: Path, short_dir: Path, fake_npu_smi: Path, daemons: list[Daemon]
) -> None:
    port = free_port()
    config = write_config(
        tmp_path, daemon_sections(tmp_path / "state", short_dir, port, devices="auto", npu_smi=fake_npu_smi)
    )
    daemon = start(daemons, config, port, tmp_path / "daemon.log")
    cards = daemon.request("GET", "/device/physical-info").body["cards"]
    assert [c["index"] for c in cards] == list(range(8))  # devices=auto through the recorded npu-smi output
    assert (short_dir / "grant.sock").exists()
    second = {**BODY, "flexnpu_id": "job-2", "aicore_alloc": 8, "priority": "high"}
    assert daemon.request("POST", "/device/register", BODY).body["result"] == "created"
    assert daemon.request("POST", "/device/register", second).body["result"] == "created"
    assert daemon.request("POST", "/device/register", {**BODY, "flexnpu_id": "job-3", "aicore_alloc": 1}).status == 409
    before = daemon.request("GET", "/device/flexnpu-info").body["registrations"]

    daemon.kill()
    daemon = start(daemons, config, port, tmp_path / "daemon.log")
    after = daemon.request("GET", "/device/flexnpu-info").body["registrations"]
    assert [(r["flexnpu_id"], r["aicore_alloc"], r["priority"]) for r in after] == [
        (r["flexnpu_id"], r["aicore_alloc"], r["priority"]) for r in before
    ]
    assert daemon.request("POST", "/device/register", BODY).body["result"] == "unchanged"
    assert daemon.request("POST", "/device/unregister", {"flexnpu_id": "job-1"}).status == 200

    assert daemon.stop(signal.SIGTERM) == 0
    assert not (short_dir / "grant.sock").exists()
    daemon = start(daemons, config, port, tmp_path / "daemon.log")
    assert [r["flexnpu_id"] for r in daemon.request("GET", "/device/flexnpu-info").body["registrations"]] == ["job-2"]
    assert daemon.stop(signal.SIGINT) == 0


def test_status_command_shows_cards_and_tenants(tmp_path: Path, short_dir: Path, daemons: list[Daemon]) -> None:
    port = free_port()
    daemon = start(
        daemons,
        write_config(tmp_path, daemon_sections(tmp_path / "state", short_dir, port)),
        port,
        tmp_path / "daemon.log",
    )
    daemon.request("POST", "/device/register", {**BODY, "npu": 1, "entity": "bert-serving"})
    done = run_cli("status", "--url", daemon.url)
    assert done.returncode == 0, done.stderr
    assert "bert-serving" in done.stdout and "2/10" in done.stdout and "16384/65536" in done.stdout
    as_json = json.loads(run_cli("status", "--url", daemon.url, "--json").stdout)
    assert [c["tenants"] for c in as_json["cards"]] == [0, 1]
    assert daemon.stop() == 0
    unreachable = run_cli("status", "--url", daemon.url)
    assert unreachable.returncode == 1 and unreachable.stderr.count("\n") == 1
    assert "unreachable" in unreachable.stderr


def test_corrupt_state_is_reported_and_moved_aside(tmp_path: Path, short_dir: Path, daemons: list[Daemon]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "registrations.json").write_text('{"version": 1, "registrations": [')
    port = free_port()
    log = tmp_path / "daemon.log"
    daemon = start(daemons, write_config(tmp_path, daemon_sections(state, short_dir, port)), port, log)
    assert daemon.request("GET", "/device/flexnpu-info").body["registrations"] == []
    aside = [p.name for p in state.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1
    text = log.read_text()
    assert "ERROR" in text and str(state / "registrations.json") in text and aside[0] in text
    assert daemon.request("POST", "/device/register", {**BODY, "npu": 0}).status == 200
    assert daemon.stop() == 0


def test_bearer_token_forced_on_loopback(tmp_path: Path, short_dir: Path, daemons: list[Daemon]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("0123456789abcdef\n")
    port = free_port()
    sections = daemon_sections(tmp_path / "state", short_dir, port, token_file=token_file)
    sections["server"]["auth"] = "token"
    daemon = start(daemons, write_config(tmp_path, sections), port, tmp_path / "daemon.log")
    body = {**BODY, "npu": 0}
    assert daemon.request("POST", "/device/register", body).status == 401
    assert daemon.request("POST", "/device/register", body, token="wrong").status == 401
    assert daemon.request("POST", "/device/register", body, token="0123456789abcdef").status == 200
    assert http_request(daemon.url + "/service/health").status == 200
    denied = run_cli("status", "--url", daemon.url)
    assert denied.returncode == 1 and "401" in denied.stderr
    allowed = run_cli("status", "--url", daemon.url, "--token-file", str(token_file))
    assert allowed.returncode == 0 and "job-1" in allowed.stdout
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    ("server", "flexnpu", "named"),
    [
        ({"host": "0.0.0.0"}, {}, "[flexnpu] token_file"),
        ({"prot": 1, "port": "99999"}, {}, "[server] port=99999"),
        ({}, {"devices": "sim:910B3x0"}, "[flexnpu] devices"),
        ({}, {"devices": "auto", "npu_smi": "/nonexistent/npu-smi"}, "[flexnpu] devices"),
    ],
)
def test_bad_config_exits_with_one_line(
    tmp_path: Path, server: dict[str, object], flexnpu: dict[str, object], named: str
) -> None:
    sections = daemon_sections(tmp_path / "state", tmp_path, free_port(), **flexnpu)
    sections["server"].update(server)
    done = run_cli("daemon", "--config", str(write_config(tmp_path, sections)))
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and named in done.stderr, done.stderr


def test_port_in_use_exits_with_one_line(tmp_path: Path, short_dir: Path, daemons: list[Daemon]) -> None:
    port = free_port()
    config = write_config(tmp_path, daemon_sections(tmp_path / "state", short_dir, port))
    first = start(daemons, config, port, tmp_path / "daemon.log")
    done = run_cli("daemon", "--config", str(config))
    assert done.returncode == 1 and str(port) in done.stderr.splitlines()[-1]
    assert first.stop() == 0


def test_grant_path_figures_and_a_client_surviving_a_restart(
    tmp_path: Path, short_dir: Path, daemons: list[Daemon]
) -> None:
    port = free_port()
    config = write_config(tmp_path, daemon_sections(tmp_path / "state", short_dir, port))
    daemon = start(daemons, config, port, tmp_path / "daemon.log")
    assert daemon.request("POST", "/device/register", {**BODY, "npu": 0}).status == 200
    client = GrantClient(str(short_dir / "grant.sock"), "job-1", 0.2, reconnect_interval_s=0.05)
    try:
        assert client.connect()
        lease = client.acquire()
        assert not lease.local
        # The daemon charges max(reported, held) but at most held + a grace: a report within the grace counts.
        client.release(500)
        wait_for(
            "a grant and 0.5 ms of device time",
            lambda: _figures(daemon)["grants"] >= 1 and _figures(daemon)["device_time_us"] >= 500,
        )

        daemon.kill()
        daemon = start(daemons, config, port, tmp_path / "daemon.log")

        def reconnected() -> bool:
            lease = client.acquire()
            client.release(100)
            return not lease.local and client.reconnects >= 1

        wait_for("the client to reconnect", reconnected)
    finally:
        client.close()
    assert daemon.stop() == 0


def _figures(daemon: Daemon) -> dict[str, float]:
    (view,) = daemon.request("GET", "/device/flexnpu-info").body["registrations"]
    return {k: float(view[k]) for k in ("grants", "device_time_us", "achieved_share", "wait_p99_us")}


def test_unusable_socket_dir_exits_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    sections = daemon_sections(tmp_path / "state", blocker / "sockets", free_port())
    done = run_cli("daemon", "--config", str(write_config(tmp_path, sections)))
    assert done.returncode == 1
    assert "[flexnpu] socket_dir" in done.stderr.splitlines()[-1]
