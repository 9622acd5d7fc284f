"""How the node components (device plugin, DRA kubelet plugin) build their Kubernetes API client configuration.

The ``kubernetes`` client's own config loader, in the order ``kubernetes.config.load_config`` uses: ``kubeconfig``
when given; else ``KUBECONFIG`` (a ``:``-separated list of files, merged); else ``~/.kube/config`` when it exists;
else the pod's service account (in-cluster). Kubeconfigs with exec plugins (EKS, GKE, OIDC helpers) work through
the loader's exec provider. The files are named here, not left to the loader's default, which it reads from
KUBECONFIG once at import; ``persist_config=False``: a refreshed token is never written back to a mounted file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import kubernetes.client
import kubernetes.config
from kubernetes.config.config_exception import ConfigException

DEFAULT_FILE = "~/.kube/config"
# What the loader raises for a missing, unreadable or malformed configuration (callers name it in their own error).
LOADER_ERRORS = (ConfigException, OSError, ValueError, TypeError)


def load_configuration(
    kubeconfig: Path | None = None, env: Mapping[str, str] = os.environ
) -> kubernetes.client.Configuration:
    """The loaded client configuration; one of LOADER_ERRORS when it cannot be loaded."""
    configuration = kubernetes.client.Configuration()
    files = str(kubeconfig) if kubeconfig is not None else env.get("KUBECONFIG", "")
    if not files and Path(DEFAULT_FILE).expanduser().exists():
        files = DEFAULT_FILE
    if files:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=files, client_configuration=configuration, persist_config=False
        )
    else:
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration
