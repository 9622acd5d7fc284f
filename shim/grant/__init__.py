"""The grant path, server side: runs inside flexnpud and hands time slices to the in-pod runtimes."""
