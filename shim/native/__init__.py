"""libflexnpu, the native interposer (the C sources beside this file; SYMBOLS.md lists what it intercepts).

The project's install builds it with the C compiler (setup.py's ``build_py`` runs this folder's Makefile):

- ``pip install .`` puts ``libflexnpu.so`` into this package's folder;
- ``pip install -e .`` builds it in place, into ``build/libflexnpu.so`` here (``make -C shim/native`` does the same).

``library_path()`` is where ``flexnpu shim run`` (``LD_PRELOAD``) and the benchmarks find it. Without a C compiler
at install time the Python parts install anyway and ``library_path()`` says what to run.
"""

from __future__ import annotations

from pathlib import Path

LIBRARY_NAME = "libflexnpu.so"
# The interposer's configuration, read once at load (gate.c).
ENV_SHIM_DIR = "FLEXNPU_SHIM_DIR"
ENV_ID = "FLEXNPU_ID"
DEFAULT_SHIM_DIR = "/var/run/flexnpu"
HERE = Path(__file__).resolve().parent
# Where an install may have put it, in order: the wheel's package data, then the in-place (editable / make) build.
CANDIDATES = (HERE / LIBRARY_NAME, HERE / "build" / LIBRARY_NAME)


class LibraryMissing(FileNotFoundError):
    """libflexnpu.so was not built (no C compiler at install time, or the build failed)."""


def find_library(candidates: tuple[Path, ...] = CANDIDATES) -> Path | None:
    """The first of ``candidates`` that is a file, or None."""
    for path in candidates:
        if path.is_file():
            return path
    return None


def library_path(candidates: tuple[Path, ...] = CANDIDATES) -> Path:
    """The installed ``libflexnpu.so``; LibraryMissing (with the command that builds it) when there is none."""
    found = find_library(candidates)
    if found is None:
        raise LibraryMissing(
            f"{LIBRARY_NAME} is not installed (looked in {', '.join(str(p) for p in candidates)}): install a C "
            f"compiler and make, then reinstall (pip install .) or run `make -C {HERE}`"
        )
    return found
