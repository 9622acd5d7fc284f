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

NATIVE = Path(__file__).resolve().parent / "shim" / "native"
LIBRARY = "libflexnpu.so"


def _warn(message: str) -> None:
    print(f"WARNING: flexnpu: {message}", file=sys.stderr)


def build_native(out_dir: "str | Path") -> "Path | None":
    """``make -C shim/native BUILD=out_dir``; the library's path, or None (with a warning) when it cannot be built."""
    compiler = os.environ.get("CC", "cc").split()[0]
    for tool in ("make", compiler):
        if shutil.which(tool) is None:
            _warn(
                f"no `{tool}` on PATH: the native interposer {LIBRARY} is not built (the Python parts install; "
                f"install a C compiler and make, then reinstall)"
            )
            return None
    cmd = ["make", "-s", "-C", str(NATIVE), f"BUILD={out_dir}", "all"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        _warn(f"building {LIBRARY} failed ({' '.join(cmd)}); the Python parts install:\n{result.stdout}{result.stderr}")
        return None
    return Path(out_dir) / LIBRARY


class BuildPyWithNative(build_py):
    """build_py, then libflexnpu.so: in place for an editable install, into the package for a wheel."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            build_native(NATIVE / "build")
            return
        target = Path(self.build_lib) / "flexnpu" / "shim" / "native" / LIBRARY
        target.unlink(missing_ok=True)  # never ship a library left in build/ by an earlier build
        with tempfile.TemporaryDirectory(prefix="flexnpu-native-") as tmp:
            built = build_native(tmp)
            if built is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(built, target)


setup(packages=packages, package_dir=FOLDERS, cmdclass={"build_py": BuildPyWithNative})
