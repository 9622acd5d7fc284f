"""flexnpu: share Ascend 910B NPUs between Kubernetes pods.

This package root stays free of imports beyond the standard library: the in-pod runtime
(``flexnpu.shim.runtime``) is injected into containers we do not control and imports through it.
"""

__version__ = "0.1.0"
