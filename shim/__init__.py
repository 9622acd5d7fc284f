"""flexnpu.shim: the node daemon flexnpud, the slice scheduler, the in-pod runtime and the simulated NPU.

This package root imports nothing beyond the standard library: it is on the path of every Python process in a
pod that uses a vNPU, through the injected runtime.
"""
