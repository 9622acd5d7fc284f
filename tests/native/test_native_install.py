"""The install ships libflexnpu: ``library_path()`` finds it, a wheel carries it, and no compiler means a warning.

The wheel tests call setuptools' PEP 517 backend on this tree (as ``pip install .`` does), into a temporary
directory; a ``CC`` that does not exist stands for a machine without a C compiler.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from native_helpers import REPO, missing_toolchain

from flexnpu.shim import native

WHEEL_LIBRARY = "flexnpu/shim/native/libflexnpu.so"


def test_library_path_takes_the_first_built_candidate(tmp_path: Path) -> None:
    wheel, in_place = tmp_path / "libflexnpu.so", tmp_path / "build" / "libflexnpu.so"
    with pytest.raises(native.LibraryMissing, match="make -C"):
        native.library_path((wheel, in_place))
    in_place.parent.mkdir()
    in_place.write_bytes(b"\x7fELF")
    assert native.library_path((wheel, in_place)) == in_place
    wheel.write_bytes(b"\x7fELF")
    assert native.library_path((wheel, in_place)) == wheel
    (tmp_path / "dir.so").mkdir()
    assert native.find_library((tmp_path / "dir.so",)) is None  # a directory is not the library


def test_the_installed_library_exports_the_interposed_entry_points() -> None:
    if missing_toolchain():
        pytest.skip(missing_toolchain() or "")
    path = native.library_path()  # this checkout was installed with a compiler: it must be there
    assert path.read_bytes()[:4] == b"\x7fELF"
    if shutil.which("nm") is None:
        pytest.skip("no nm to list the exported symbols")
    symbols = subprocess.run(
        ["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    for name in ("aclrtLaunchKernel", "rtKernelLaunch", "cuLaunchKernel", "cuGetProcAddress", "dlsym"):
        assert name in symbols, name


def build_wheel(out: Path, env: dict[str, str]) -> tuple[Path, str]:
    code = "import sys; from setuptools import build_meta; print('WHEEL=' + build_meta.build_wheel(sys.argv[1]))"
    result = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    name = [line for line in result.stdout.splitlines() if line.startswith("WHEEL=")][-1].split("=", 1)[1]
    return out / name, result.stderr


@pytest.mark.slow
def test_a_wheel_ships_the_library_and_installs_without_a_compiler(tmp_path: Path) -> None:
    if missing_toolchain():
        pytest.skip(missing_toolchain() or "")
    env = {k: v for k, v in os.environ.items() if k != "CC"}
    wheel, _ = build_wheel(tmp_path / "with", env)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert WHEEL_LIBRARY in names
        assert z.read(WHEEL_LIBRARY)[:4] == b"\x7fELF"
    assert not any(n.endswith(".c") for n in names)  # the sources are not package data

    bare, stderr = build_wheel(tmp_path / "without", {**env, "CC": str(tmp_path / "no-such-cc")})
    assert "WARNING: flexnpu: no `" in stderr and "is not built" in stderr
    with zipfile.ZipFile(bare) as z:
        names = set(z.namelist())
    assert WHEEL_LIBRARY not in names
    assert {"flexnpu/shim/cli.py", "flexnpu/shim/native/__init__.py"} <= names  # the Python parts are there
