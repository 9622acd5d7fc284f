"""Copy flexnpu's in-pod runtime onto the node, where the device plugin's Allocate mounts it into every vNPU pod.

Runs as the init container of the node DaemonSet (``python install_runtime.py /host/runtime``). The runtime is
standard-library Python (DESIGN.md section 7), so copying its package files is all it takes; the target then
holds ``flexnpu/__init__.py``, ``flexnpu/shim/__init__.py``, ``flexnpu/shim/runtime/...`` and, when the runtime
ships one, a top-level ``sitecustomize.py`` that activates it in every Python process of the pod.

Running pods bind-mount the target, so every file is written under a temporary name and renamed over the old
one, and nothing is ever deleted: a pod importing the runtime sees either the old or the new file, never a
half-written or missing one.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path

RUNTIME_PACKAGE = "flexnpu.shim.runtime"
PARENT_PACKAGES = ("flexnpu", "flexnpu.shim")
SITECUSTOMIZE = "sitecustomize.py"


def package_dir(name: str) -> Path:
    """Directory of an installed package (works for the editable install's mapped folders too)."""
    module = importlib.import_module(name)
    return Path(next(iter(module.__path__)))


def runtime_files() -> dict[str, Path]:
    """Target-relative path -> source file of everything the runtime needs in a pod."""
    files = {f"{name.replace('.', '/')}/__init__.py": package_dir(name) / "__init__.py" for name in PARENT_PACKAGES}
    root = package_dir(RUNTIME_PACKAGE)
    prefix = RUNTIME_PACKAGE.replace(".", "/")
    for source in sorted(root.rglob("*.py")):
        if "__pycache__" not in source.parts:
            files[f"{prefix}/{source.relative_to(root).as_posix()}"] = source
    if (root / SITECUSTOMIZE).is_file():
        files[SITECUSTOMIZE] = root / SITECUSTOMIZE
    return files


def replace_file(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically: a temporary file in the same directory, then a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def install(target: Path) -> list[str]:
    """Copy the runtime into ``target``; returns the target-relative paths written."""
    written: list[str] = []
    for relative, source in runtime_files().items():
        destination = target / relative
        data = source.read_bytes()
        if not destination.is_file() or destination.read_bytes() != data:
            replace_file(destination, data)
        written.append(relative)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: install_runtime.py TARGET_DIR", file=sys.stderr)
        return 2
    try:
        written = install(Path(argv[0]))
    except (OSError, ImportError) as exc:
        print(f"install_runtime: cannot install the runtime into {argv[0]}: {exc}", file=sys.stderr)
        return 1
    print(f"install_runtime: {len(written)} files in {argv[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
