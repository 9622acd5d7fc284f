"""One tenant of the GPU benchmark (``bench/gpu/run.py``): a PyTorch CUDA process, run with libflexnpu preloaded
(or not, for the ungated and solo baselines). Standard library + torch only, so it runs in any image that has a
CUDA build of torch.

    python tenant.py batch SECONDS SEED BURST OUT   bursts of 1..BURST fp16 matmuls of random sizes, each burst
                                                    followed by a synchronise; OUT gets one record per burst:
                                                    [host ns at the synchronise's return, FLOPs, event ms]
    python tenant.py steps COUNT KERNELS GAP_MS OUT  COUNT steps of KERNELS matmuls + synchronise, GAP_MS of host
                                                    time between; OUT gets each step's host wall time in ns
    python tenant.py memory OUT                     torch.cuda.mem_get_info(), then allocations of 64 MiB until
                                                    the first out-of-memory error, from 4 threads at once

``--cpu`` before the mode runs the same loops on torch's CPU device with host timers instead of CUDA events and
at most 16 blocks a thread: ``run.py --cpu-dry-run`` checks the benchmark's plumbing with it, nothing more.

Each prints ``ready`` once CUDA is initialised and its inputs exist, and waits for a line on stdin before it
starts, so that every tenant of a run starts measuring at once. The kernel sizes are drawn here; neither libflexnpu
nor flexnpud is told any of them.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

SIZES = (1024, 2048, 4096, 8192)
CPU_SIZES = (128, 256)  # the dry run's, small enough for a laptop
MIB = 1 << 20


def main(argv: list[str]) -> int:
    import torch  # imported here: `--help` and the orchestrator's checks need no torch

    cpu = argv[0] == "--cpu"
    mode, rest = argv[int(cpu)], argv[int(cpu) + 1 :]
    if not cpu and not torch.cuda.is_available():
        print("error=torch.cuda.is_available() is False", flush=True)
        return 3
    device = torch.device("cpu" if cpu else "cuda")

    def sync() -> None:
        if not cpu:
            torch.cuda.synchronize()

    if mode == "memory":
        return memory(torch, device, Path(rest[0]), cpu)
    dtype = torch.float32 if cpu else torch.float16
    sizes = CPU_SIZES if cpu else SIZES
    mats = {n: (torch.randn(n, n, device=device, dtype=dtype),) * 2 for n in sizes}
    outs = {n: torch.empty(n, n, device=device, dtype=dtype) for n in sizes}
    sync()
    print("ready", flush=True)
    sys.stdin.readline()
    records: list[Any] = []
    if mode == "batch":
        seconds, seed, burst, out = float(rest[0]), int(rest[1]), int(rest[2]), Path(rest[3])
        rng = random.Random(seed)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            timer = HostTimer() if cpu else CudaTimer(torch)
            flops = 0
            for _ in range(rng.randint(1, burst)):
                n = rng.choice(CPU_SIZES if cpu else SIZES)
                torch.mm(mats[n][0], mats[n][1], out=outs[n])
                flops += 2 * n**3
            records.append([time.monotonic_ns(), flops, timer.stop()])
    elif mode == "steps":
        count, kernels, gap_ms, out = int(rest[0]), int(rest[1]), float(rest[2]), Path(rest[3])
        n = CPU_SIZES[-1] if cpu else 2048
        for _ in range(count):
            t0 = time.monotonic_ns()
            for _ in range(kernels):
                torch.mm(mats[n][0], mats[n][1], out=outs[n])
            sync()
            records.append(time.monotonic_ns() - t0)
            time.sleep(gap_ms / 1000)
    else:
        print(f"error=unknown mode {mode!r}", flush=True)
        return 2
    out.write_text(json.dumps(records), encoding="utf-8")
    return 0


class CudaTimer:
    """A start event recorded now; ``stop()`` records the end, waits for it, and returns the device ms between."""

    def __init__(self, torch: Any) -> None:
        self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.start.record()

    def stop(self) -> float:
        self.end.record()
        self.end.synchronize()
        return float(self.start.elapsed_time(self.end))


class HostTimer:
    """The CPU dry run's stand-in: host milliseconds."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def stop(self) -> float:
        return (time.perf_counter() - self.t0) * 1000


def memory(torch: Any, device: Any, out: Path, cpu: bool) -> int:
    free, total = (None, None) if cpu else torch.cuda.mem_get_info()
    print("ready", flush=True)
    sys.stdin.readline()
    held: list[Any] = []
    lock = threading.Lock()
    refused = [0]

    oom_error: type[BaseException] = MemoryError if cpu else torch.cuda.OutOfMemoryError

    def grab() -> None:
        for _ in range(16 if cpu else 1 << 30):
            try:
                block = torch.empty(64 * MIB, dtype=torch.uint8, device=device)
            except oom_error:
                with lock:
                    refused[0] += 1
                return
            with lock:
                held.append(block)

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not cpu:
        torch.cuda.synchronize()
    result = {
        "mem_get_info_free": free,
        "mem_get_info_total": total,
        "allocated_bytes": len(held) * 64 * MIB,
        "reserved_bytes": 0 if cpu else int(torch.cuda.memory_reserved()),
        "out_of_memory_errors": refused[0],
    }
    out.write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    sys.exit(main(sys.argv[1:]))
