"""The host file the node components mount onto a container's ``/etc/ld.so.preload`` (DESIGN.md section 7).

Both node components write it at start: the device plugin (its Allocate answers mount it) and the DRA kubelet
plugin (its CDI specs mount it). A container runtime refuses to start a container whose mount source is missing,
so a component that cannot write it stops before it advertises anything.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flexnpu.containeredits import NodeLayout, preload_text

log = logging.getLogger(__name__)


def write_preload_file(layout: NodeLayout) -> None:
    """Write the file naming the interposer's pod path, atomically and world-readable; OSError when it cannot."""
    if not (layout.inject_shim and layout.interposer):
        return
    path = Path(layout.preload_host_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = preload_text(layout)
    if path.is_file() and path.read_text() == text:
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    temporary.chmod(0o644)
    temporary.replace(path)
    log.info("interposer: %s names %s", path, layout.interposer_pod_path)
