"""The harness's own promises, without the binary: a stopped component leaves no process of its group behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from realk8s_procs import ComponentDied, Proc, group_alive, wait_for


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    # A leader that ignores SIGTERM and a child of its own: both must be gone after stop().
    proc = Proc("stubborn", ["sh", "-c", "trap '' TERM; sleep 300 & echo started; wait"], tmp_path / "log")
    wait_for("child started", lambda: True if "started" in (tmp_path / "log").read_text() else None, 30)
    proc.stop(grace=0.5)
    assert not group_alive(proc.pgid)
    assert proc.popen.returncode is not None


def test_a_dead_component_fails_the_wait_at_once(tmp_path: Path) -> None:
    proc = Proc("dies", ["sh", "-c", "echo bad flag >&2; exit 3"], tmp_path / "log")
    proc.popen.wait(timeout=30)
    try:
        with pytest.raises(ComponentDied, match="exited with 3") as died:
            wait_for("never", lambda: None, 300, watch=[proc])
        assert "bad flag" in str(died.value)
    finally:
        proc.stop()
