"""The in-pod runtime: standard library only, Python 3.9+ (injected into containers we do not control)."""
