"""The runtime as a self-contained directory for images we do not control (``names.SHIM_RUNTIME_HOST_DIR``).

The node DaemonSet copies it to the host once; the device plugin mounts it read-only at
``names.SHIM_RUNTIME_POD_DIR`` and puts that directory on PYTHONPATH. It holds ``sitecustomize.py`` and the few
standard-library-only modules of ``flexnpu`` the runtime imports, so it works in any Python 3.9+ image without
installing anything: ``python -m flexnpu.shim.runtime.bundle DEST``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import List, Sequence, Tuple

_HERE = os.path.dirname(os.path.abspath(__file__))
_SHIM = os.path.dirname(_HERE)


def _sources() -> List[Tuple[str, str]]:
    import flexnpu
    import flexnpu.names

    package = os.path.dirname(os.path.abspath(flexnpu.__file__))
    files = [
        (os.path.join(_HERE, "site", "sitecustomize.py"), "sitecustomize.py"),
        (os.path.join(package, "__init__.py"), os.path.join("flexnpu", "__init__.py")),
        (os.path.abspath(flexnpu.names.__file__), os.path.join("flexnpu", "names.py")),
        (os.path.join(_SHIM, "__init__.py"), os.path.join("flexnpu", "shim", "__init__.py")),
    ]
    for name in sorted(os.listdir(_HERE)):
        if name.endswith(".py"):
            files.append((os.path.join(_HERE, name), os.path.join("flexnpu", "shim", "runtime", name)))
    return files


def write_bundle(dest: str) -> List[str]:
    """Write the bundle into ``dest`` atomically (a running pod never sees a half-written runtime)."""
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".flexnpu-runtime-", dir=parent)
    written = []
    for source, relative in _sources():
        target = os.path.join(staging, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(source, target)
        written.append(relative)
    os.chmod(staging, 0o755)
    if os.path.isdir(dest):
        old = dest + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dest, old)
        os.rename(staging, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, dest)
    return written


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m flexnpu.shim.runtime.bundle DEST", file=sys.stderr)
        return 2
    for relative in write_bundle(argv[0]):
        print(relative)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
