"""The ``flexnpu`` entry point: every subcommand of DESIGN.md section 14 (and issue 14's ``dra-plugin``), each with
--help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flexnpu.cli import COMMANDS, main

DESIGN_COMMANDS = {
    "demo",
    "daemon",
    "deviceplugin",
    "dra-plugin",
    "extender",
    "operator",
    "shim",
    "simnpu",
    "bench",
    "status",
}


def test_every_design_command_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(COMMANDS) == DESIGN_COMMANDS
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in DESIGN_COMMANDS:
        assert f"  {name} " in out


@pytest.mark.parametrize("name", sorted(DESIGN_COMMANDS))
def test_every_command_has_help(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flexnpu.cli", name, "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout.lower()


def test_unknown_command_fails_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "frobnicate" in err and err.count("\n") == 1


def test_no_arguments_prints_usage_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().out


def test_operator_subpackage_does_not_shadow_stdlib() -> None:
    code = "import flexnpu.operator, operator; assert operator.add(2, 3) == 5; print(flexnpu.operator.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "flexnpu.operator"


def test_bench_lists_every_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    for name in ("share", "priority", "overhead", "idle", "grant", "placement", "extender", "deviceplugin", "operator"):
        assert name in out
    assert main(["bench", "nope"]) == 2


def test_python_started_at_the_repository_root_keeps_the_stdlib_operator() -> None:
    # `python -m venv` (and any -m or -c) puts the working directory first on sys.path; a root folder named
    # `operator` would then replace the standard library's before `collections` is imported.
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-S", "-c", "import collections, operator; print(operator.eq(1, 1))"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_demo_cluster_runs_the_cluster_in_a_box(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--cluster", "--help"])
    assert exit_info.value.code == 0
    assert "flexnpu demo --cluster" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "prog"),
    [(["demo", "--cluster"], "flexnpu demo --cluster"), (["bench", "operator", "--quick"], "flexnpu bench operator")],
)
def test_commands_that_run_test_support_name_the_extra_without_kmock(
    argv: list[str], prog: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "kmock", None)  # what an install without the test extra finds
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(prog) and "kmock" in err and "pip install -e '.[test]'" in err


def test_test_support_is_not_a_product_sub_package() -> None:
    import flexnpu
    import flexnpu_testsupport

    root = Path(flexnpu.__file__).resolve().parent
    assert not (root / "box").exists()
    assert Path(flexnpu_testsupport.__file__).resolve().parent.name == "testsupport"


def test_version_prints_the_distribution_version(capsys: pytest.CaptureFixture[str]) -> None:
    from flexnpu import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"flexnpu {__version__}"
