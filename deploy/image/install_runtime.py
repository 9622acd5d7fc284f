"""The node DaemonSet's init container: ``python install_runtime.py /host/runtime [--interposer /host/lib/FILE]``.

Copies flexnpu's in-pod runtime onto the node, where the device plugin's Allocate mounts it into every vNPU pod.
The work is ``flexnpu.shim.runtime.bundle`` (in place, atomic per file, nothing deleted under running pods).
With ``--interposer FILE`` it also installs the image's ``libflexnpu.so`` at FILE (written beside it, then
renamed over it: a running pod keeps the library it mapped), which Allocate mounts with ``/etc/ld.so.preload``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from flexnpu.shim.native import LibraryMissing, library_path
from flexnpu.shim.runtime.bundle import main as install_bundle


def install_interposer(dest: Path) -> None:
    """Copy the installed libflexnpu.so to ``dest`` atomically (raises LibraryMissing or OSError)."""
    source = library_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "--interposer":
        try:
            install_interposer(Path(argv[2]))
        except (LibraryMissing, OSError) as exc:
            print(f"cannot install libflexnpu.so at {argv[2]}: {exc}", file=sys.stderr)
            return 1
        print(f"flexnpu interposer: {argv[2]}")
        argv = argv[:1]
    return install_bundle(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
