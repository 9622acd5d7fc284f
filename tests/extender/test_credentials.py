"""The extender finds its credentials as kubectl does, through the ``kubernetes`` config loader: exec plugins
(token refreshed when it expires), KUBECONFIG, contexts, the in-cluster service account; bad files are named."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from kmock import Request

from flexnpu.errors import ConfigError
from flexnpu.extender import main
from flexnpu.extender.kube import KubeApi, load_kube_config

PROBE = "/api/v1/namespaces/default/pods/probe"

# An exec credential plugin: prints a new token on every run (tok-1, tok-2, ...), already expired, so the loader
# must run it again before the next request.
PLUGIN = """\
import json, pathlib, sys
runs = pathlib.Path(sys.argv[1])
count = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(count))
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1",
    "kind": "ExecCredential",
    "status": {"token": f"tok-{count}", "expirationTimestamp": "2000-01-01T00:00:00Z"},
}))
"""


def kubeconfig(tmp_path: Path, server: str, users: dict[str, dict[str, Any]], current: str) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": name, "user": user} for name, user in users.items()],
        "contexts": [
            {"name": name, "context": {"cluster": "c", "user": name, "namespace": f"ns-{name}"}} for name in users
        ],
        "current-context": current,
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def exec_user(tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN, encoding="utf-8")
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script), str(tmp_path / "runs")],
            "interactiveMode": "Never",
        }
    }


@pytest.fixture()
def seen_tokens(kube: kmock.KubernetesEmulator) -> list[str]:
    """The Authorization header of every request for the probe pod."""
    tokens: list[str] = []

    def probe(request: Request) -> dict[str, Any]:
        tokens.append(str(request.headers.get("Authorization", "")))
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": "default"}}

    kube["get", PROBE] << probe
    return tokens


async def test_an_exec_plugin_token_is_sent_and_refreshed(
    tmp_path: Path, kube: kmock.KubernetesEmulator, seen_tokens: list[str]
) -> None:
    path = kubeconfig(tmp_path, str(kube.url).rstrip("/"), {"eks": exec_user(tmp_path)}, "eks")
    config = load_kube_config(path, None, {}, home_kubeconfig=tmp_path / "absent")
    async with KubeApi(config) as api:
        await api.get(PROBE)
        await api.get(PROBE)
    assert seen_tokens[0].startswith("Bearer tok-")
    assert seen_tokens[1] != seen_tokens[0]  # expired: the plugin ran again
    assert config.namespace == "ns-eks"


async def test_kubeconfig_from_the_environment_and_a_chosen_context(
    tmp_path: Path, kube: kmock.KubernetesEmulator, seen_tokens: list[str]
) -> None:
    users = {"admin": {"token": "admin-token"}, "team": {"token": "team-token"}}
    path = kubeconfig(tmp_path, str(kube.url).rstrip("/"), users, "admin")
    env = {"KUBECONFIG": str(path)}
    default = load_kube_config(None, None, env, home_kubeconfig=tmp_path / "absent")
    chosen = load_kube_config(None, "team", env, home_kubeconfig=tmp_path / "absent")
    for config in (default, chosen):
        async with KubeApi(config) as api:
            await api.get(PROBE)
    assert seen_tokens == ["Bearer admin-token", "Bearer team-token"]
    assert (default.namespace, chosen.namespace) == ("ns-admin", "ns-team")


def test_the_home_kubeconfig_is_used_when_nothing_else_is_named(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path, "https://home.example:6443", {"me": {"token": "t"}}, "me")
    config = load_kube_config(None, None, {}, home_kubeconfig=path)
    assert (config.server, config.authorization_header()) == ("https://home.example:6443", "Bearer t")


@pytest.mark.parametrize(
    "content",
    [None, "{not: [yaml", "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n"],
    ids=["missing", "not-yaml", "no-context"],
)
def test_a_missing_or_invalid_kubeconfig_is_a_config_error_naming_the_file(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "broken.yaml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        load_kube_config(path, None, {})


def test_an_unknown_context_is_a_config_error(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path, "https://x.example", {"me": {"token": "t"}}, "me")
    with pytest.raises(ConfigError, match="kubeconfig"):
        load_kube_config(path, "nope", {})


def test_the_command_names_a_bad_kubeconfig_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.conf"
    assert main.main(["--kubeconfig", str(missing), "--context", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nowhere.conf" in err and len(err.splitlines()) == 1


def test_the_in_cluster_service_account(tmp_path: Path) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("sa-token", encoding="utf-8")
    (account / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    (account / "namespace").write_text("flexnpu-system\n", encoding="utf-8")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    config = load_kube_config(None, None, env, account_dir=account, home_kubeconfig=tmp_path / "absent")
    assert config.server == "https://10.0.0.1:443"
    assert config.authorization_header().lower() == "bearer sa-token"
    assert (config.namespace, config.ca_pem) == ("flexnpu-system", "-----BEGIN CERTIFICATE-----\n")


def test_outside_a_cluster_without_a_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        load_kube_config(None, None, {}, home_kubeconfig=tmp_path / "absent")
