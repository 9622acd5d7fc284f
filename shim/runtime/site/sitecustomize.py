"""Activates the flexnpu in-pod runtime in every Python process started with this directory on PYTHONPATH.

Python imports ``sitecustomize`` once at start-up. This one activates the runtime from the FLEXNPU_* environment
(nothing happens without FLEXNPU_CLAIM) and then runs the image's own ``sitecustomize``, if there is one further
down the path, so that injecting flexnpu never hides the image's start-up code. A failure is reported on stderr
and never stops the application.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def _activate() -> None:
    try:
        from flexnpu.shim.runtime.activation import activate_from_env

        activate_from_env()
    except Exception as exc:  # the application must start even when the runtime cannot
        sys.stderr.write("flexnpu: runtime not activated: %s\n" % (exc,))


def _chain() -> None:
    """Run the next ``sitecustomize`` on sys.path (the image's), skipping this directory."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == here:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_image_sitecustomize", candidate)
            if spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            return


_activate()
_chain()
