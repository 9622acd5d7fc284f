"""The install builds the simulated node's device libraries (the fake AscendCL the demo runs on) beside
libflexnpu: a wheel carries them, an editable install finds them in place, no compiler means a warning.

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

from flexnpu.shim.simnpu import native as fakes

REPO = Path(__file__).resolve().parents[3]
WHEEL_DIR = "flexnpu/shim/simnpu/native/lib/"


def missing_toolchain() -> str | None:
    for tool in ("cc", "make"):
        if shutil.which(tool) is None:
            return f"no `{tool}` on PATH"
    return None


def test_library_dir_takes_the_first_complete_candidate(tmp_path: Path) -> None:
    wheel, in_place = tmp_path / "lib", tmp_path / "build"
    with pytest.raises(fakes.LibrariesMissing, match="make -C"):
        fakes.library_dir((wheel, in_place))
    in_place.mkdir()
    for name in fakes.LIBRARIES:
        (in_place / name).write_bytes(b"\x7fELF")
    assert fakes.library_dir((wheel, in_place)) == in_place
    wheel.mkdir()
    (wheel / fakes.ASCENDCL).write_bytes(b"\x7fELF")
    assert fakes.find_library_dir((wheel, in_place)) == in_place  # one library alone is not an install
    for name in fakes.LIBRARIES:
        (wheel / name).write_bytes(b"\x7fELF")
    assert fakes.library_dir((wheel, in_place)) == wheel


def test_this_checkout_has_the_fake_libraries_built() -> None:
    if missing_toolchain():
        pytest.skip(missing_toolchain() or "")
    folder = fakes.library_dir()  # installed with a compiler (pip install -e .): they must be there
    assert (folder / fakes.ASCENDCL).read_bytes()[:4] == b"\x7fELF"


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
def test_a_wheel_ships_the_fake_libraries_and_installs_without_a_compiler(tmp_path: Path) -> None:
    if missing_toolchain():
        pytest.skip(missing_toolchain() or "")
    env = {k: v for k, v in os.environ.items() if k != "CC"}
    wheel, _ = build_wheel(tmp_path / "with", env)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for library in (*fakes.LIBRARIES, "libcuda.so"):
            assert WHEEL_DIR + library in names
            assert z.read(WHEEL_DIR + library)[:4] == b"\x7fELF"
    assert not any(n.endswith((".c", ".h")) for n in names)  # the sources are not package data

    bare, stderr = build_wheel(tmp_path / "without", {**env, "CC": str(tmp_path / "no-such-cc")})
    assert "the simulated node's device libraries" in stderr and "`flexnpu demo` uses the Python runtime" in stderr
    with zipfile.ZipFile(bare) as z:
        names = set(z.namelist())
    assert not any(n.startswith(WHEEL_DIR) for n in names)
    assert "flexnpu/shim/simnpu/native/__init__.py" in names  # the Python parts are there
