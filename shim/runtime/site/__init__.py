"""The directory the device plugin puts on PYTHONPATH: its ``sitecustomize`` activates the runtime."""
