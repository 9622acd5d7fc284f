"""The in-pod runtime: activation (sitecustomize, ``flexnpu shim run``, ``slice()``), gating, memory caps."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from rt_helpers import registration, run_child, runtime_env

import flexnpu.shim
from flexnpu import names
from flexnpu.shim.grant.server import GrantServer
from flexnpu.shim.runtime.activation import RuntimeConfig, RuntimeConfigError
from flexnpu.shim.runtime.simnpu_client import SimNpuClient

MakeServer = Callable[..., GrantServer]

GATED_KERNELS = """
from flexnpu.shim.runtime.activation import active
runtime = active()
assert runtime is not None and runtime.simnpu is not None, "not activated"
for _ in range(20):
    runtime.simnpu.launch(300)
runtime.simnpu.finish()
print("slices", runtime.slicer.slices)
"""


def test_sitecustomize_activates_the_runtime_in_a_child(
    make_grant_server: MakeServer, sim_socket: str, grant_socket: str, tmp_path: Path
) -> None:
    server = make_grant_server([registration("pod-a")])
    env = runtime_env(tmp_path, "pod-a", grant_socket, "simnpu:" + sim_socket)
    result = run_child(tmp_path, GATED_KERNELS, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("slices ")
    with SimNpuClient(sim_socket, "observer") as observer:
        truth = observer.stats()["pod-a"]
    figures = server.stats()["pod-a"]
    assert truth["busy_us"] == 6000
    assert figures["grants"] >= 1
    # Charged max(what the runtime reported, the time it held the card): never less than the device really did.
    assert figures["device_time_us"] >= truth["busy_us"]


def test_without_a_claim_the_runtime_stays_off(sim_socket: str, grant_socket: str, tmp_path: Path) -> None:
    env = runtime_env(tmp_path, "", grant_socket, "simnpu:" + sim_socket)
    code = "from flexnpu.shim.runtime.activation import active\nprint(active() is None)\n"
    result = run_child(tmp_path, code, env)
    assert (result.returncode, result.stdout.strip()) == (0, "True"), result.stderr


def test_a_bad_variable_is_reported_and_the_application_still_runs(grant_socket: str, tmp_path: Path) -> None:
    env = runtime_env(tmp_path, "pod-a", grant_socket, "tpu")
    result = run_child(tmp_path, "print('app ran')", env)
    assert result.returncode == 0
    assert result.stdout.strip() == "app ran"
    assert f"{names.ENV_DEVICE}='tpu'" in result.stderr


SLICE_STEP = """
import flexnpu.shim
with flexnpu.shim.slice() as lease:
    print(lease is not None and not lease.local)
"""


def test_shim_run_activates_the_command(make_grant_server: MakeServer, grant_socket: str, tmp_path: Path) -> None:
    server = make_grant_server([registration("pod-b")])
    env = {
        k: v
        for k, v in runtime_env(tmp_path, "", grant_socket, "step").items()
        if not k.startswith("FLEXNPU_") and k != "PYTHONPATH"
    }
    argv = [
        sys.executable,
        "-m",
        "flexnpu.cli",
        "shim",
        "run",
        "--claim",
        "pod-b",
        "--socket",
        grant_socket,
        "--device",
        "step",
        "--",
        sys.executable,
        "-c",
        SLICE_STEP,
    ]
    result = run_child(tmp_path, "", env, args=argv)
    assert (result.returncode, result.stdout.strip()) == (0, "True"), result.stderr
    assert server.stats()["pod-b"]["grants"] == 1


def test_shim_run_passes_the_exit_status_and_needs_a_command(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "flexnpu.cli", "shim", "run", "--", sys.executable, "-c", "raise SystemExit(7)"]
    assert run_child(tmp_path, "", args=argv).returncode == 7
    missing = run_child(tmp_path, "", args=[sys.executable, "-m", "flexnpu.cli", "shim", "run"])
    assert missing.returncode == 2
    assert "no command given" in missing.stderr


def test_slice_without_runtime_runs_ungated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(names.ENV_CLAIM, raising=False)
    with flexnpu.shim.slice() as lease:
        assert lease is None


HOLD_MEMORY = """
import sys
from flexnpu.shim.runtime.activation import active
device = active().simnpu
device.allocate(1000)
print("holding", flush=True)
sys.stdin.readline()
device.allocate(24)
for _ in range(5):
    device.launch(100)
device.finish()
print("still fine", flush=True)
"""

PASS_THE_CAP = """
from flexnpu.shim.runtime.activation import active
from flexnpu.shim.runtime.errors import MemoryCapExceeded
device = active().simnpu
device.allocate(1000)
try:
    device.allocate(100)
except MemoryCapExceeded as exc:
    print("oom:", exc)
"""


def test_memory_cap_is_an_out_of_memory_error_in_that_process_only(
    make_grant_server: MakeServer,
    sim_socket: str,
    grant_socket: str,
    tmp_path: Path,
    child: Callable[..., subprocess.Popen[str]],
) -> None:
    make_grant_server([registration("pod-a", memory_mib=1024), registration("pod-b", memory_mib=1024)])
    device = "simnpu:" + sim_socket
    neighbour = child(
        HOLD_MEMORY, runtime_env(tmp_path, "pod-b", grant_socket, device, **{names.ENV_MEMORY_MIB: "1024"})
    )
    assert neighbour.stdout is not None
    assert neighbour.stdout.readline().strip() == "holding"
    greedy = run_child(
        tmp_path, PASS_THE_CAP, runtime_env(tmp_path, "pod-a", grant_socket, device, **{names.ENV_MEMORY_MIB: "1024"})
    )
    assert greedy.returncode == 0, greedy.stderr
    assert greedy.stdout.startswith("oom:") and "cap of 1024 MiB" in greedy.stdout
    out, err = neighbour.communicate("go\n", timeout=60)
    assert neighbour.returncode == 0, err
    assert out.strip() == "still fine"


TORCH_CPU = """
import torch
from flexnpu.shim.runtime.activation import active
from flexnpu.shim.runtime.errors import MemoryCapExceeded
runtime = active()
a = torch.ones(1000)
b = a * 2
try:
    torch.ones(1 << 20)  # 4 MiB past a 1 MiB cap
except MemoryCapExceeded as exc:
    print("oom", isinstance(exc, torch.OutOfMemoryError))
del a, b
c = torch.ones(1000) + 1
# Gated: the operators ran under a grant the runtime still holds. Accounted: a + b at the peak (2 x 4000 bytes),
# c alone now, and the refused 4 MiB never counted.
print("kind", runtime.torch_kind, "holding", runtime.slicer.holding,
      "memory", runtime.memory.used_bytes, runtime.memory.peak_bytes, float(c.sum()))
"""


def test_torch_cpu_adapter_gates_operators_and_caps_memory(
    make_grant_server: MakeServer, grant_socket: str, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    server = make_grant_server([registration("torch-pod")])
    env = runtime_env(tmp_path, "torch-pod", grant_socket, "cpu", **{names.ENV_MEMORY_MIB: "1"})
    result = run_child(tmp_path, TORCH_CPU, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["oom True", "kind cpu holding True memory 4000 8000 2000.0"]
    assert server.stats()["torch-pod"]["grants"] >= 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({names.ENV_CLAIM: "x", names.ENV_SHIM_DISABLE: "1"}, None),
        ({names.ENV_CLAIM: "x"}, RuntimeConfig("x")),
        (
            {
                names.ENV_CLAIM: "x",
                names.ENV_SHARE: "0.3",
                names.ENV_MEMORY_MIB: "2048",
                names.ENV_DEVICE: "simnpu:/s",
                names.ENV_SOCKET: "/g.sock",
                names.ENV_PRIORITY: "high",
            },
            RuntimeConfig("x", "/g.sock", 0.3, 2048, "high", "simnpu:/s"),
        ),
    ],
)
def test_config_from_env(env: dict[str, str], expected: RuntimeConfig | None) -> None:
    assert RuntimeConfig.from_env(env) == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (names.ENV_SHARE, "1.5"),
        (names.ENV_SHARE, "half"),
        (names.ENV_MEMORY_MIB, "-3"),
        (names.ENV_DEVICE, "simnpu:"),
    ],
)
def test_config_names_the_bad_variable(key: str, value: str) -> None:
    with pytest.raises(RuntimeConfigError, match=key):
        RuntimeConfig.from_env({names.ENV_CLAIM: "x", key: value})


def _bare_python() -> str:
    """The base interpreter of this virtualenv: the standard library only, no flexnpu installed."""
    return str(Path(sys.base_prefix) / "bin" / "python3")


def test_the_bundle_runs_on_a_bare_interpreter(grant_socket: str, tmp_path: Path) -> None:
    from flexnpu.shim.runtime.bundle import write_bundle

    bare = _bare_python()
    if run_child(tmp_path, "", args=[bare, "-c", "import flexnpu"]).returncode == 0:
        pytest.skip("the base interpreter has flexnpu installed")
    bundle = tmp_path / "runtime"
    write_bundle(str(bundle))
    write_bundle(str(bundle))  # replacing an existing bundle works too
    env = runtime_env(tmp_path, "pod-a", grant_socket, "step")
    env["PYTHONPATH"] = str(bundle)
    code = (
        "import sys, flexnpu.shim\n"
        "with flexnpu.shim.slice() as lease:\n"
        "    print(lease.local, sorted(m for m in ('aiohttp', 'grpc', 'yaml') if m in sys.modules))\n"
    )
    result = run_child(tmp_path, code, env, args=[bare, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True []"  # no daemon: paced locally; nothing beyond the standard library
