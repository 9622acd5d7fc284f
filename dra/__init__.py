"""The DRA mode (resource.k8s.io/v1): the kubelet plugin and the ResourceSlice publisher of each node."""
