"""The runtime as a self-contained directory for images we do not control (``names.SHIM_RUNTIME_HOST_DIR``).

The node DaemonSet's init container writes it to the host (``python -m flexnpu.shim.runtime.bundle DEST``, or the
image's ``install_runtime.py``); the device plugin mounts it read-only at ``names.SHIM_RUNTIME_POD_DIR`` and puts
that directory on PYTHONPATH. It holds ``sitecustomize.py`` and the few standard-library-only modules of
``flexnpu`` the runtime imports (the protocol module ``flexnpu.shim.grant.shm`` among them), so it works in any
Python 3.9+ image without installing anything.

Running pods bind-mount the directory, so it is updated in place: every file is written under a temporary name and
renamed over the old one, and nothing is deleted. A pod sees the old file or the new one, never a missing or
half-written one.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import List, Sequence, Tuple

_HERE = os.path.dirname(os.path.abspath(__file__))
_SHIM = os.path.dirname(_HERE)


def bundle_files() -> List[Tuple[str, str]]:
    """(source file, bundle-relative path) of everything the runtime needs in a pod."""
    import flexnpu
    import flexnpu.names

    package = os.path.dirname(os.path.abspath(flexnpu.__file__))
    files = [
        (os.path.join(_HERE, "site", "sitecustomize.py"), "sitecustomize.py"),
        (os.path.join(package, "__init__.py"), os.path.join("flexnpu", "__init__.py")),
        (os.path.abspath(flexnpu.names.__file__), os.path.join("flexnpu", "names.py")),
        (os.path.join(_SHIM, "__init__.py"), os.path.join("flexnpu", "shim", "__init__.py")),
        # The shared-memory grant protocol (standard library only): the runtime's shm_client maps slots with it.
        (os.path.join(_SHIM, "grant", "__init__.py"), os.path.join("flexnpu", "shim", "grant", "__init__.py")),
        (os.path.join(_SHIM, "grant", "shm.py"), os.path.join("flexnpu", "shim", "grant", "shm.py")),
    ]
    for name in sorted(os.listdir(_HERE)):
        if name.endswith(".py"):
            files.append((os.path.join(_HERE, name), os.path.join("flexnpu", "shim", "runtime", name)))
    return files


def _replace_file(target: str, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically: a temporary file in the same directory, then a rename."""
    directory = os.path.dirname(target)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(target) + ".")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def write_bundle(dest: str) -> List[str]:
    """Write (or update in place) the bundle in ``dest``; returns the bundle-relative paths."""
    written = []
    for source, relative in bundle_files():
        target = os.path.join(dest, relative)
        with open(source, "rb") as f:
            data = f.read()
        try:
            with open(target, "rb") as f:
                unchanged = f.read() == data
        except OSError:
            unchanged = False
        if not unchanged:
            _replace_file(target, data)
        written.append(relative)
    return written


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m flexnpu.shim.runtime.bundle DEST", file=sys.stderr)
        return 2
    try:
        written = write_bundle(argv[0])
    except OSError as exc:
        print(f"cannot install the flexnpu runtime into {argv[0]}: {exc}", file=sys.stderr)
        return 1
    print(f"flexnpu runtime: {len(written)} files in {argv[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
