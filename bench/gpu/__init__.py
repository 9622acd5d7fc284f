"""``flexnpu bench gpu``: the interposer on a real NVIDIA GPU (``run.py``; ``tenant.py`` is each tenant)."""

from flexnpu.bench.gpu.run import main

__all__ = ["main"]
