"""``flexnpu shim run -- CMD``: CMD runs with libflexnpu preloaded (appended to LD_PRELOAD) and its configuration.

The end-to-end case is the grant test's, through the command: the installed library gates a fake-AscendCL program
until its registration holds the card (the test publishes the grants, as flexnpud would).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from native_helpers import MIB, Pod, fake_device, parse, wait_for

from flexnpu.shim import cli, native


def args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["run", *argv, "--", "true"])


def test_the_library_is_appended_to_ld_preload_once() -> None:
    lib = "/opt/flexnpu/libflexnpu.so"
    assert cli.with_preload({}, lib)["LD_PRELOAD"] == lib
    assert cli.with_preload({"LD_PRELOAD": ""}, lib)["LD_PRELOAD"] == lib
    assert cli.with_preload({"LD_PRELOAD": "/a.so"}, lib)["LD_PRELOAD"] == f"/a.so:{lib}"
    assert cli.with_preload({"LD_PRELOAD": "/a.so /b.so"}, lib)["LD_PRELOAD"] == f"/a.so /b.so:{lib}"
    assert cli.with_preload({"LD_PRELOAD": f"/a.so {lib}"}, lib)["LD_PRELOAD"] == f"/a.so {lib}"


def test_shim_dir_and_id_come_from_flags_then_environment_then_the_claim() -> None:
    env = cli.child_env(args("--shim-dir", "/s", "--id", "pod-x"), {"FLEXNPU_SHIM_DIR": "/e", "FLEXNPU_ID": "e"})
    assert (env["FLEXNPU_SHIM_DIR"], env["FLEXNPU_ID"]) == ("/s", "pod-x")
    env = cli.child_env(args(), {"FLEXNPU_SHIM_DIR": "/e", "FLEXNPU_ID": "e", "FLEXNPU_CLAIM": "c"})
    assert (env["FLEXNPU_SHIM_DIR"], env["FLEXNPU_ID"]) == ("/e", "e")
    assert cli.child_env(args("--claim", "c"), {})["FLEXNPU_ID"] == "c"
    assert "FLEXNPU_ID" not in cli.child_env(args(), {})


def installed_library() -> str:
    try:
        return str(native.library_path())
    except native.LibraryMissing as exc:
        pytest.fail(f"the install did not build the interposer: {exc}")


def shim_run(pod: Pod, *argv: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = pod.env(None, env_extra, preload=False)
    return subprocess.Popen(
        [sys.executable, "-m", "flexnpu.cli", "shim", "run", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_command_sees_the_library_after_an_existing_preload(pod: Pod) -> None:
    library = installed_library()
    proc = shim_run(
        pod,
        "--shim-dir",
        str(pod.shim_dir),
        "--id",
        "pod-q",
        "--",
        "sh",
        "-c",
        'echo "preload=$LD_PRELOAD"; echo "dir=$FLEXNPU_SHIM_DIR"; echo "id=$FLEXNPU_ID"',
        env_extra={"LD_PRELOAD": "/nonexistent/libother.so"},
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert parse(out) == {"preload": f"/nonexistent/libother.so:{library}", "dir": str(pod.shim_dir), "id": "pod-q"}


def test_shim_run_gates_a_native_program_until_its_registration_holds_the_card(pod: Pod) -> None:
    installed_library()
    pod.add_slot("pod-a", slot_index=1, mem_cap_bytes=64 * MIB)
    b = pod.add_slot("pod-b", slot_index=2, mem_cap_bytes=64 * MIB)
    pod.grant(1, epoch=1)  # pod-a holds the card, with no end
    proc = shim_run(
        pod, "--shim-dir", str(pod.shim_dir), "--id", "pod-b", "--", pod.program("acl_prog"), "launch", "20", "100"
    )
    try:
        wait_for(lambda: b.get("want") == 1 or proc.poll() is not None, "pod-b to ask for the card")
        assert proc.poll() is None, proc.communicate()
        clients = fake_device(pod.device)[2] if pod.device.exists() else {}
        assert sum(c.launches for c in clients.values()) == 0  # nothing reached the device while pod-a held it
        pod.grant(2, epoch=2)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert parse(out)["launched"] == "20"
    busy = sum(c.busy_ns for c in fake_device(pod.device)[2].values())
    assert busy == 20 * 100_000
    assert b.get("used_ns") >= busy  # metered by the interposer's device events, not declared
