"""The node DaemonSet's init container: ``python install_runtime.py /host/runtime``.

Copies flexnpu's in-pod runtime onto the node, where the device plugin's Allocate mounts it into every vNPU pod.
The work is ``flexnpu.shim.runtime.bundle`` (in place, atomic per file, nothing deleted under running pods).
"""

from __future__ import annotations

import sys

from flexnpu.shim.runtime.bundle import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
