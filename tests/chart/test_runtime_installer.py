"""deploy/image/install_runtime.py, the node DaemonSet's init container: what it copies is all a pod needs.

The installed tree is imported by a fresh interpreter without site-packages (-S), with only the target on its
path, as a pod whose image knows nothing of flexnpu would import it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from chart_support import REPO

INSTALLER = REPO / "deploy" / "image" / "install_runtime.py"

IMPORT_EVERY_RUNTIME_MODULE = """
import pkgutil, sys
import flexnpu.shim.runtime as runtime
assert runtime.__file__.startswith(sys.argv[1]), runtime.__file__
for module in pkgutil.walk_packages(runtime.__path__, runtime.__name__ + "."):
    __import__(module.name)
print("ok")
"""


def install(target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(INSTALLER), str(target)], capture_output=True, text=True, timeout=60, check=False
    )


def test_installed_runtime_imports_with_the_standard_library_only(tmp_path: Path) -> None:
    done = install(tmp_path / "runtime")
    assert done.returncode == 0, done.stderr
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(tmp_path / "runtime")}
    imported = subprocess.run(
        [sys.executable, "-S", "-c", IMPORT_EVERY_RUNTIME_MODULE, str(tmp_path / "runtime")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "ok"


def test_reinstall_replaces_files_and_deletes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "runtime"
    assert install(target).returncode == 0
    init = target / "flexnpu" / "shim" / "runtime" / "__init__.py"
    init.write_text("# stale\n", encoding="utf-8")
    left_behind = target / "flexnpu" / "shim" / "runtime" / "from_an_older_release.py"
    left_behind.write_text("OLD = True\n", encoding="utf-8")
    done = install(target)
    assert done.returncode == 0, done.stderr
    assert init.read_text(encoding="utf-8") != "# stale\n"
    # A running pod may still import the older module: nothing is removed under it.
    assert left_behind.exists()
    assert not [p for p in target.rglob(".*") if p.is_file()]


def test_usage_and_unwritable_target_fail_with_one_line(tmp_path: Path) -> None:
    no_args = subprocess.run([sys.executable, str(INSTALLER)], capture_output=True, text=True, timeout=60, check=False)
    assert no_args.returncode == 2 and no_args.stderr.count("\n") == 1
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    done = install(blocker / "runtime")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and str(blocker) in done.stderr


def test_interposer_is_installed_beside_the_runtime(tmp_path: Path) -> None:
    from flexnpu.shim.native import find_library

    built = find_library()
    if built is None:
        import pytest

        pytest.skip("libflexnpu.so is not built (no C compiler at install time)")
    dest = tmp_path / "lib" / "libflexnpu.so"
    done = subprocess.run(
        [sys.executable, str(INSTALLER), str(tmp_path / "runtime"), "--interposer", str(dest)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() == built.read_bytes()
    assert os.access(dest, os.X_OK)
    assert (tmp_path / "runtime" / "flexnpu" / "shim" / "runtime" / "__init__.py").is_file()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]


def test_interposer_into_an_unwritable_place_fails_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    done = subprocess.run(
        [sys.executable, str(INSTALLER), str(tmp_path / "runtime"), "--interposer", str(blocker / "libflexnpu.so")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().startswith("cannot install libflexnpu.so at")
