"""Maps the top-level folders onto sub-packages of ``flexnpu``, and ``testsupport/`` onto ``flexnpu_testsupport``.

The operator lives in ``operator_/``: a folder named ``operator`` in the working directory shadows the standard
library's ``operator`` for any ``python -m ...`` run from the repository root.

``flexnpu_testsupport`` (the kubelet stub, the kmock API emulator, the operator's test kit and the cluster in a
box) ships in the same distribution so that ``flexnpu demo --cluster`` and ``flexnpu bench deviceplugin|operator``
work after ``pip install -e '.[test]'``, but it is a package of its own, not part of the product: no product
module imports it except those two commands, lazily (``.importlinter`` checks it).

``build_py`` also builds the native interposer ``libflexnpu.so`` (``shim/native/Makefile``, C11): into the
package (``flexnpu/shim/native/libflexnpu.so``) for a wheel or ``pip install .``, in place
(``shim/native/build/``) for ``pip install -e .``. Without ``make`` or a C compiler, or when the build fails, it
warns and the Python parts install anyway (``flexnpu.shim.native.library_path()`` then says what to run).

It builds the simulated node's device libraries the same way (``shim/simnpu/native/Makefile``: the fake
``libascendcl.so``, ``libruntime.so``, ``libcuda.so.1`` and ``libnvidia-ml.so.1`` over one simulated card, which
``flexnpu demo`` runs its tenants on): into ``flexnpu/shim/simnpu/native/lib/`` for a wheel, into
``shim/simnpu/native/build/`` for an editable install. Without them ``flexnpu demo`` falls back to the Python
runtime and says so.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

FOLDERS = {
    "flexnpu": "flexnpu",
    "flexnpu.protos": "protos",
    "flexnpu.deviceplugin": "deviceplugin",
    "flexnpu.dra": "dra",
    "flexnpu.extender": "extender",
    "flexnpu.operator": "operator_",
    "flexnpu.shim": "shim",
    "flexnpu.bench": "bench",
    "flexnpu_testsupport": "testsupport",
}

packages: list[str] = []
for package, folder in FOLDERS.items():
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

HERE = Path(__file__).resolve().parent
NATIVE = HERE / "shim" / "native"
LIBRARY = "libflexnpu.so"
FAKES = HERE / "shim" / "simnpu" / "native"
FAKE_LIBRARIES = ("libruntime.so", "libascendcl.so", "libcuda.so.1", "libnvidia-ml.so.1")


def _warn(message: str) -> None:
    print(f"WARNING: flexnpu: {message}", file=sys.stderr)


def _make(folder: Path, out_dir: "str | Path", what: str, meanwhile: str = "") -> bool:
    """``make -C folder BUILD=out_dir all``; False (with a warning) when there is no toolchain or it fails."""
    compiler = os.environ.get("CC", "cc").split()[0]
    for tool in ("make", compiler):
        if shutil.which(tool) is None:
            _warn(
                f"no `{tool}` on PATH: {what} is not built (the Python parts install{meanwhile}; install a C "
                f"compiler and make, then reinstall)"
            )
            return False
    cmd = ["make", "-s", "-C", str(folder), f"BUILD={out_dir}", "all"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        _warn(
            f"building {what} failed ({' '.join(cmd)}); the Python parts install{meanwhile}:\n"
            f"{result.stdout}{result.stderr}"
        )
        return False
    return True


def build_native(out_dir: "str | Path") -> "Path | None":
    """``make -C shim/native BUILD=out_dir``; the library's path, or None (with a warning) when it cannot be built."""
    if not _make(NATIVE, out_dir, f"the native interposer {LIBRARY}"):
        return None
    return Path(out_dir) / LIBRARY


def build_fakes(out_dir: "str | Path") -> "list[Path]":
    """``make -C shim/simnpu/native BUILD=out_dir``: the simulated node's device libraries ([] when not built)."""
    what = "the simulated node's device libraries (" + ", ".join(FAKE_LIBRARIES) + ")"
    if not _make(FAKES, out_dir, what, "; `flexnpu demo` uses the Python runtime"):
        return []
    return [Path(out_dir) / name for name in FAKE_LIBRARIES]


class BuildPyWithNative(build_py):
    """build_py, then libflexnpu.so and the fake device libraries: in place for an editable install, into the
    package for a wheel."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            build_native(NATIVE / "build")
            build_fakes(FAKES / "build")
            return
        target = Path(self.build_lib) / "flexnpu" / "shim" / "native" / LIBRARY
        target.unlink(missing_ok=True)  # never ship a library left in build/ by an earlier build
        fakes = Path(self.build_lib) / "flexnpu" / "shim" / "simnpu" / "native" / "lib"
        shutil.rmtree(fakes, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="flexnpu-native-") as tmp:
            built = build_native(Path(tmp) / "interposer")
            if built is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(built, target)
            libraries = build_fakes(Path(tmp) / "fakes")
            if libraries:
                fakes.mkdir(parents=True, exist_ok=True)
                for library in libraries:
                    shutil.copy2(library, fakes / library.name)
                shutil.copy2(fakes / "libcuda.so.1", fakes / "libcuda.so")  # a wheel holds no symlinks


setup(packages=packages, package_dir=FOLDERS, cmdclass={"build_py": BuildPyWithNative})
