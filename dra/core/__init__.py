"""The DRA mode's pure decisions: no gRPC, no Kubernetes client."""
