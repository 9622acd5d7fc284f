"""The real-process benchmarks' CPU meter: CPU seconds per process group, read from /proc, and the client's own."""

from __future__ import annotations

import subprocess
import sys

from flexnpu.bench._realk8s import cpu_seconds

# Burns at least 0.3 s of its own CPU in a child it forks (same process group), says so, then waits on stdin.
BURNER = """
import os, sys, time
pid = os.fork()
if pid == 0:
    while time.process_time() < 0.3:
        pass
    os._exit(0)
os.waitpid(pid, 0)
while time.process_time() < 0.2:
    pass
print("burnt", flush=True)
sys.stdin.read()
"""


def test_cpu_of_a_process_group_counts_its_live_members() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "burnt"
        used = cpu_seconds({"burner": child.pid, "nobody": 2**22 + 1})
    finally:
        child.communicate("")
    # The leader's own 0.2 s and its reaped child's 0.3 s (the table counts in clock ticks: a tick of slack each).
    assert used["burner"] >= 0.48
    assert used["nobody"] == 0.0
    assert used["client"] > 0.0 and set(used) == {"burner", "nobody", "client"}
