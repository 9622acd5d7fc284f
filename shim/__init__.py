"""flexnpu.shim: the node daemon flexnpud, the slice scheduler, the in-pod runtime and the simulated NPU.

This package root imports nothing beyond the standard library: it is on the path of every Python process in a
pod that uses a vNPU, through the injected runtime. ``flexnpu.shim.slice`` (the explicit API,
``with flexnpu.shim.slice(): ...``) is loaded from the runtime on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["slice"]


def __getattr__(name: str) -> Any:
    if name == "slice":
        from flexnpu.shim.runtime.activation import slice as slice_

        return slice_
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
