"""flexnpud's device-memory watch: the pure verdicts, the npu-smi and slot sources, transitions, and kills."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from daemon_helpers import DATA

from flexnpu.npusmi import NpuSmiError, parse_npu_smi, parse_npu_smi_processes
from flexnpu.registration import Registration
from flexnpu.shim.core.memory import (
    MAX_MEMORY_BYTES,
    MIB,
    ProcessUsage,
    Verdict,
    clamp_bytes,
    judge_pod_wide,
    judge_processes,
    transitions,
)
from flexnpu.shim.daemon.memwatch import MemoryWatch, NpuSmiSource, ShmSource, SourceError, build_memory_watch
from flexnpu.shim.grant import shm
from flexnpu_testsupport.waiting import wait_for

WITH_PROCESSES = DATA / "npu-smi-info-8x910B3-25.2-with-processes.txt"
POD_A = "0b9c4e1a-1111-4a2b-8c3d-aaaaaaaaaaaa"
POD_B = "7f3e2d1c-2222-4b5c-9d6e-bbbbbbbbbbbb"


def reg(flexnpu_id: str, pod: str, npu: int = 0, memory_mib: int = 100, chip: int = 0) -> Registration:
    return Registration(
        flexnpu_id=flexnpu_id, entity="", npu=npu, chip=chip, aicore_alloc=2, memory_alloc=memory_mib, pod_uid=pod
    )


def proc(pid: int, mib: float, npu: int = 0, chip: int = 0) -> ProcessUsage:
    return ProcessUsage(npu=npu, chip=chip, pid=pid, used_bytes=int(mib * MIB))


# ---------------------------------------------------------------------------------------------- the pure core


@pytest.mark.parametrize(
    ("processes", "pods", "used", "pids"),
    [
        ([], {}, 0, ()),  # nothing running: 0 used, under cap
        ([proc(10, 60), proc(11, 40)], {10: POD_A, 11: POD_A}, 100 * MIB, ()),  # exactly at the cap is not over
        ([proc(10, 60), proc(11, 41)], {10: POD_A, 11: POD_A}, 101 * MIB, (10, 11)),  # two processes sum past it
        ([proc(10, 60), proc(11, 60, npu=1)], {10: POD_A, 11: POD_A}, 60 * MIB, ()),  # other card does not count
        ([proc(10, 60), proc(11, 60)], {10: POD_A, 11: POD_B}, 60 * MIB, ()),  # a neighbour's process is its own
        ([proc(10, 60), proc(11, 60)], {10: POD_A}, 60 * MIB, ()),  # a pid in no pod is not attributed
        ([proc(10, 200), proc(1, 10), proc(0, 10)], {10: POD_A, 1: POD_A, 0: POD_A}, 210 * MIB, (10,)),  # never 0/1
    ],
)
def test_judge_processes(processes: list[ProcessUsage], pods: dict[int, str], used: int, pids: tuple[int, ...]) -> None:
    (verdict,) = judge_processes([reg("a", POD_A)], processes, pods)
    assert verdict.used_bytes == used and verdict.cap_bytes == 100 * MIB
    assert verdict.over_cap == (used > 100 * MIB) and verdict.pids == pids
    assert verdict.over_bytes == max(0, used - 100 * MIB)


def test_only_the_over_pod_is_named_and_the_daemon_is_protected() -> None:
    regs = [reg("a", POD_A), reg("b", POD_B, memory_mib=1000)]
    processes = [proc(10, 150), proc(os.getpid(), 1), proc(20, 500)]
    pods = {10: POD_A, os.getpid(): POD_A, 20: POD_B}
    verdicts = {v.flexnpu_id: v for v in judge_processes(regs, processes, pods, protected=(os.getpid(),))}
    assert verdicts["a"].over_cap and verdicts["a"].pids == (10,)
    assert not verdicts["b"].over_cap and verdicts["b"].pids == () and verdicts["b"].used_bytes == 500 * MIB


def test_several_registrations_of_one_pod_on_a_card_share_the_sum_of_their_caps() -> None:
    regs = [reg("a1", POD_A, memory_mib=100), reg("a2", POD_A, memory_mib=100)]
    verdicts = judge_processes(regs, [proc(10, 150)], {10: POD_A})
    assert [(v.used_bytes, v.cap_bytes, v.over_cap) for v in verdicts] == [(150 * MIB, 200 * MIB, False)] * 2


def test_a_registration_without_pod_uid_is_unknown_and_never_judged() -> None:
    (verdict,) = judge_processes([reg("x", "")], [proc(10, 500)], {10: POD_A})
    assert verdict.used_bytes is None and not verdict.over_cap and verdict.pids == ()


def test_a_zero_cap_allows_nothing_as_the_interposer_does() -> None:
    (verdict,) = judge_processes([reg("a", POD_A, memory_mib=0)], [proc(10, 1)], {10: POD_A})
    assert verdict.over_cap and verdict.pids == (10,)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (-5, 0),
        (0, 0),
        (7, 7),
        (1 << 70, MAX_MEMORY_BYTES),
        (math.nan, 0),
        (math.inf, MAX_MEMORY_BYTES),
        (-math.inf, 0),
        (3.9, 3),
        ("12", 0),
        (None, 0),
        (True, 0),
    ],
)
def test_clamp_bytes(raw: object, expected: int) -> None:
    assert clamp_bytes(raw) == expected


def test_pod_wide_verdicts_clamp_hostile_slot_values() -> None:
    regs = [reg("a", POD_A), reg("b", ""), reg("c", POD_B)]
    verdicts = {v.flexnpu_id: v for v in judge_pod_wide(regs, {"a": 1 << 63, "b": 5 * MIB})}
    assert verdicts["a"].used_bytes == MAX_MEMORY_BYTES and verdicts["a"].over_cap and verdicts["a"].pids == ()
    assert verdicts["b"].used_bytes == 5 * MIB and not verdicts["b"].over_cap
    assert verdicts["c"].used_bytes is None and not verdicts["c"].over_cap


def test_transitions_fire_once_each_way() -> None:
    over = Verdict("a", POD_A, 0, 0, 200 * MIB, 100 * MIB, (10,))
    under = Verdict("a", POD_A, 0, 0, 50 * MIB, 100 * MIB, ())
    changed, state = transitions({}, [under])
    assert changed == [] and state == {"a": False}
    changed, state = transitions(state, [over])
    assert [(c.verdict.flexnpu_id, c.over) for c in changed] == [("a", True)]
    changed, state = transitions(state, [over])
    assert changed == []
    changed, state = transitions(state, [under])
    assert [c.over for c in changed] == [False]
    assert transitions(state, []) == ([], {})


# ---------------------------------------------------------------------------------------------- the parser


def test_process_table_of_the_real_sample() -> None:
    text = WITH_PROCESSES.read_text(encoding="utf-8")
    (process,) = parse_npu_smi_processes(text)
    assert (process.npu, process.chip, process.pid, process.name, process.memory_mib) == (2, 0, 1333928, "", 37709)
    assert len(parse_npu_smi(text).readings) == 8


@pytest.mark.parametrize(
    "bad_row",
    [
        "| 2       0                 | 13x3928       |                          | 37709                   |",
        "| 2       0                 | 1333928       |                          | -1                      |",
        "| 2       0                 | 1333928       | 37709                                              |",
    ],
)
def test_a_malformed_process_row_is_an_error_naming_the_line(bad_row: str) -> None:
    text = WITH_PROCESSES.read_text(encoding="utf-8")
    good = next(line for line in text.splitlines() if "1333928" in line)
    with pytest.raises(NpuSmiError) as err:
        parse_npu_smi_processes(text.replace(good, bad_row))
    assert err.value.line.strip() == bad_row


# ---------------------------------------------------------------------------------------------- the adapter


def fake_proc(root: Path, pods: dict[int, str]) -> Path:
    """``<root>/<pid>/cgroup`` files: pod A in the systemd (v2) layout, others in the cgroupfs (v1) layout."""
    for pid, pod in pods.items():
        (root / str(pid)).mkdir(parents=True, exist_ok=True)
        if pod == POD_A:
            text = (
                f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod.replace('-', '_')}"
                ".slice/cri-containerd-0123abcd.scope\n"
            )
        else:
            text = f"12:memory:/kubepods/burstable/pod{pod}/0123abcd\n11:cpu:/kubepods/burstable/pod{pod}/0123abcd\n"
        (root / str(pid) / "cgroup").write_text(text, encoding="utf-8")
    return root


def process_table(rows: Sequence[tuple[int, int, int]]) -> str:
    """The real sample with its process table replaced by ``(npu, pid, MiB)`` rows in npu-smi's layout."""
    head = WITH_PROCESSES.read_text(encoding="utf-8").split("| NPU     Chip")[0]
    lines = [
        head.rstrip("\n").rsplit("\n", 1)[0],
        "+---------------------------+---------------+----------------------------------------------------+",
        "| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |",
        "+===========================+===============+====================================================+",
    ]
    for npu, pid, mib in rows:
        lines += [
            f"| {npu:<7d} 0                 | {pid:<13d} | {'python':<24} | {mib:<23d} |",
            "+===========================+===============+====================================================+",
        ]
    return "\n".join(lines) + "\n"


def fake_npu_smi(directory: Path, output: str, exit_code: int = 0) -> Path:
    """A shell script standing in for npu-smi: ``info`` prints ``output``."""
    (directory / "out.txt").write_text(output, encoding="utf-8")
    script = directory / "npu-smi"
    script.write_text(
        f"#!/bin/sh\n[ \"$1\" = info ] || exit 3\ncat '{directory / 'out.txt'}'\nexit {exit_code}\n", encoding="utf-8"
    )
    script.chmod(0o755)
    return script


def test_process_table_helper_round_trips() -> None:
    assert [(p.npu, p.pid, p.memory_mib) for p in parse_npu_smi_processes(process_table([(0, 42, 7), (3, 43, 9)]))] == [
        (0, 42, 7),
        (3, 43, 9),
    ]


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait()


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_kill_sends_sigkill_to_the_over_cap_pod_only(tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    over_1, over_2, neighbour, other_card = sleeper(), sleeper(), sleeper(), sleeper()
    children += [over_1, over_2, neighbour, other_card]
    proc_root = fake_proc(
        tmp_path / "proc", {over_1.pid: POD_A, over_2.pid: POD_A, neighbour.pid: POD_B, other_card.pid: POD_A}
    )
    script = fake_npu_smi(
        tmp_path,
        process_table([(0, over_1.pid, 80), (0, over_2.pid, 40), (0, neighbour.pid, 900), (1, other_card.pid, 50)]),
    )
    regs = [reg("a", POD_A, memory_mib=100), reg("b", POD_B, memory_mib=1000), reg("a1", POD_A, npu=1)]
    watch = MemoryWatch(NpuSmiSource(str(script), proc_root), lambda: regs, enforce="kill", proc_root=proc_root)
    verdicts = {v.flexnpu_id: v for v in watch.poll()}
    assert verdicts["a"].over_cap and verdicts["a"].used_bytes == 120 * MIB
    assert set(verdicts["a"].pids) == {over_1.pid, over_2.pid}
    assert over_1.wait(timeout=30) == -9 and over_2.wait(timeout=30) == -9
    assert neighbour.poll() is None and other_card.poll() is None
    assert sorted(watch.killed) == sorted([over_1.pid, over_2.pid])


def test_report_mode_kills_nothing_and_logs_each_transition_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, children: list[subprocess.Popen[bytes]]
) -> None:
    child = sleeper()
    children.append(child)
    proc_root = fake_proc(tmp_path / "proc", {child.pid: POD_B})
    script = fake_npu_smi(tmp_path, process_table([(0, child.pid, 300)]))
    regs = [reg("b", POD_B, memory_mib=100)]
    watch = MemoryWatch(NpuSmiSource(str(script), proc_root), lambda: regs, proc_root=proc_root)
    with caplog.at_level(logging.INFO, logger="flexnpu.shim.daemon.memwatch"):
        for _ in range(3):
            watch.poll()
        fake_npu_smi(tmp_path, process_table([(0, child.pid, 50)]))
        watch.poll()
        watch.poll()
    events = [r.getMessage() for r in caplog.records if "event=" in r.getMessage()]
    assert len(events) == 2
    assert events[0].startswith("event=MemoryOverCap flexnpu_id=b") and "over_mib=200.0 action=report" in events[0]
    assert f"pids={child.pid}" in events[0] and f"pod_uid={POD_B}" in events[0]
    assert events[1].startswith("event=MemoryUnderCap flexnpu_id=b")
    assert child.poll() is None and watch.killed == []
    assert watch.figures()["b"].used_bytes == 50 * MIB


def test_kill_skips_the_daemon_itself_and_a_pid_that_changed_pod(tmp_path: Path) -> None:
    killed: list[int] = []
    proc_root = fake_proc(tmp_path / "proc", {os.getpid(): POD_A, 4242: POD_A})
    script = fake_npu_smi(tmp_path, process_table([(0, os.getpid(), 90), (0, 4242, 90)]))
    regs = [reg("a", POD_A)]

    class Reused(NpuSmiSource):
        def read(self, registrations: Sequence[Registration]) -> list[Verdict]:
            verdicts = super().read(registrations)
            fake_proc(proc_root, {4242: POD_B})  # pid 4242 exits and is reused by another pod before the kill
            return verdicts

    watch = MemoryWatch(
        Reused(str(script), proc_root), lambda: regs, enforce="kill", proc_root=proc_root, killer=killed.append
    )
    (verdict,) = watch.poll()
    assert verdict.over_cap and verdict.pids == (4242,)
    assert killed == []


@pytest.mark.parametrize(
    ("output", "exit_code"),
    [
        ("", 0),
        ("garbage\n", 0),
        ("\x00\xff" * 1000, 0),
        ("ok", 1),
    ],
)
def test_bad_npu_smi_output_never_raises_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, output: str, exit_code: int
) -> None:
    script = fake_npu_smi(tmp_path, output, exit_code)
    watch = MemoryWatch(NpuSmiSource(str(script), tmp_path), lambda: [reg("a", POD_A)])
    with caplog.at_level(logging.INFO, logger="flexnpu.shim.daemon.memwatch"):
        assert watch.poll() == [] and watch.poll() == []
        fake_npu_smi(tmp_path, process_table([]))
        assert [v.used_bytes for v in watch.poll()] == [0]
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "memory caps are not watched" in m]) == 1
    assert messages[-1] == "memory watch: source readable again"


def test_a_missing_npu_smi_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot run"):
        NpuSmiSource(str(tmp_path / "absent")).read([])


def test_slots_are_the_source_on_simulated_cards(tmp_path: Path) -> None:
    regs = [reg("a", POD_A), reg("b", POD_B), reg("none", "")]
    for index, registration in enumerate(regs[:2]):
        slot = shm.Slot.create(
            str(tmp_path / shm.slot_name(registration.flexnpu_id)),
            slot_index=index,
            card_index=0,
            mem_cap_bytes=registration.memory_alloc * MIB,
            share_permille=200,
            priority=1,
        )
        slot.set("mem_used_bytes", (1 << 64) - 1 if index == 0 else 30 * MIB)  # pod A writes a hostile figure
        slot.close()
    (tmp_path / shm.slot_name("none")).write_bytes(b"\xff" * 10)  # truncated garbage: unknown, no exception
    watch = build_memory_watch("sim:910B3x2", "npu-smi", str(tmp_path), lambda: regs, "kill", 5.0)
    assert isinstance(watch._source, ShmSource)
    verdicts = {v.flexnpu_id: v for v in watch.poll()}
    assert verdicts["a"].over_cap and verdicts["a"].used_bytes == MAX_MEMORY_BYTES and verdicts["a"].pids == ()
    assert verdicts["b"].used_bytes == 30 * MIB and not verdicts["b"].over_cap
    assert verdicts["none"].used_bytes is None
    assert watch.killed == []


def test_the_thread_polls_until_stopped(tmp_path: Path) -> None:
    script = fake_npu_smi(tmp_path, process_table([]))
    watch = MemoryWatch(NpuSmiSource(str(script), tmp_path), lambda: [reg("a", POD_A)], interval_s=0.1)
    watch.start()
    try:
        verdict = wait_for("a first round", lambda: watch.figures().get("a"))
        assert verdict.used_bytes == 0
    finally:
        watch.stop()
    assert watch._thread is not None and not watch._thread.is_alive()


def test_a_kill_that_fails_is_logged_once_and_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    proc_root = fake_proc(tmp_path / "proc", {4242: POD_A})
    script = fake_npu_smi(tmp_path, process_table([(0, 4242, 500)]))
    attempts: list[int] = []

    def refuse(pid: int) -> None:
        attempts.append(pid)
        raise PermissionError(1, "Operation not permitted")

    watch = MemoryWatch(
        NpuSmiSource(str(script), proc_root),
        lambda: [reg("a", POD_A)],
        enforce="kill",
        proc_root=proc_root,
        killer=refuse,
    )
    with caplog.at_level(logging.WARNING, logger="flexnpu.shim.daemon.memwatch"):
        watch.poll()
        watch.poll()
    assert attempts == [4242, 4242] and watch.killed == []
    assert len([r for r in caplog.records if "cannot kill pid 4242" in r.getMessage()]) == 1
