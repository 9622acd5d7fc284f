"""flexnpu on the real control plane: the chart's RBAC applied, each component a process with its own token.

The chart is rendered with Helm's own library (helm_python, as tests/chart does). Its RBAC objects, CRDs and
ServiceAccounts are created on the real API server with the admin credential; then each component gets a
ServiceAccount token (TokenRequest) of the account the chart gives it, so a rule the chart forgot fails a test.
Component command lines are the chart's container args with only addresses, paths and the node name adjusted.
"""

from __future__ import annotations

import base64
import configparser
import io
import json
import os
import shutil
import sys
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from kubernetes import client as k8s
from kubernetes import utils as k8s_utils
from prometheus_client.parser import text_string_to_metric_families
from realk8s_cluster import ControlPlane, KubeletNode, write_kubeconfig
from realk8s_procs import Proc, http_ok, wait_for
from realk8s_tenants import build_native

from flexnpu import names
from flexnpu.claims import ClaimPhase, registration_id
from flexnpu.waiting import free_port

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "helm" / "flexnpu"
RELEASE = "flexnpu"
NAMESPACE = "flexnpu-system"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
DAEMON_CONFIG_KEY = "flexnpud.conf"
SCHEDULER_CONFIG_KEY = "scheduler-config.yaml"
# The suite's node: four 910B3 cards (inventory file of the device plugin); flexnpud simulates the same four.
INVENTORY: tuple[dict[str, Any], ...] = tuple(
    {"index": i, "model": "910B3", "uuid": f"npu-realk8s-{i}"} for i in range(4)
)
# Pod networking: kubelet refuses a loopback node IP ("nodeIP can't be loopback address"), so pods get no hostIP
# here, while the suite's CRI gives every pod sandbox 127.0.0.1: the chart's node.hostNetwork=false makes the
# operator find flexnpud by its pod IP, which is right on this node.
SUITE_VALUES: dict[str, Any] = {"node": {"hostNetwork": False, "daemon": {"devices": f"sim:910B3x{len(INVENTORY)}"}}}

Manifest = dict[str, Any]


def render_chart(
    values: Mapping[str, Any] | None = None, release: str = RELEASE, namespace: str = NAMESPACE
) -> tuple[list[Manifest], list[Manifest]]:
    """The chart's manifests and CRDs, as ``helm install`` would render them."""
    with helm.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(dict(values) if values else None, name=release, namespace=namespace)
        crds = [doc for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc]
    manifests = [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    # The VNpuClaim CRD is a template (absent in mode dra), the kopf peering CRD a file of crds/.
    crds += [m for m in manifests if m["kind"] == "CustomResourceDefinition"]
    return manifests, crds


def component_of(manifest: Manifest) -> str | None:
    label: str | None = manifest["metadata"].get("labels", {}).get("app.kubernetes.io/component")
    return label


def only(manifests: Iterable[Manifest], kind: str, component: str) -> Manifest:
    [found] = [m for m in manifests if m["kind"] == kind and component_of(m) == component]
    return found


def container_args(workload: Manifest, container: str) -> list[str]:
    [found] = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == container]
    args: list[str] = found.get("args", [])
    return list(args)


def metric(url: str, name: str, labels: Mapping[str, str]) -> float:
    """One sample of a Prometheus text endpoint (0 when it has none)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def replace_flags(args: Sequence[str], replacements: Mapping[str, str | None]) -> list[str]:
    """``--flag=value`` args with each named flag set to its replacement (None drops it); new flags appended."""
    out, seen = [], set()
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in replacements:
            seen.add(name)
            value = replacements[name]
            if value is not None:
                out.append(f"{name}={value}")
        else:
            out.append(arg)
    out += [f"{name}={value}" for name, value in replacements.items() if name not in seen and value is not None]
    return out


def apply(
    api: k8s.ApiClient, manifests: Iterable[Manifest], namespace: str = NAMESPACE, exist_ok: bool = False
) -> None:
    """Create each object with the admin credential (the namespace is created first when missing).

    With ``exist_ok`` an object that already exists (409 AlreadyExists) is left as it is.
    """
    core = k8s.CoreV1Api(api)
    if namespace not in {ns.metadata.name for ns in core.list_namespace().items if ns.metadata}:
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    for manifest in manifests:
        try:
            k8s_utils.create_from_dict(  # type: ignore[no-untyped-call]
                api, manifest, namespace=manifest["metadata"].get("namespace", namespace)
            )
        except k8s_utils.FailToCreateError as exc:
            if not exist_ok or any(e.status != 409 for e in exc.api_exceptions):
                raise


def service_account_token(api: k8s.ApiClient, account: str, seconds: int = 3600, namespace: str = NAMESPACE) -> str:
    """A token of ServiceAccount ``account`` in the chart's namespace (TokenRequest)."""
    body = k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds))
    answer = k8s.CoreV1Api(api).create_namespaced_service_account_token(account, namespace, body)
    if answer.status is None or not answer.status.token:
        raise RuntimeError(f"TokenRequest for {namespace}/{account} returned no token")
    return answer.status.token


class Flexnpu:
    """The chart's components as processes against ``cluster``, each with its ServiceAccount's token.

    One release per instance: ``release`` in ``namespace``, its node components on ``node`` (default: the
    cluster's first node).
    """

    def __init__(
        self,
        cluster: ControlPlane,
        api: k8s.ApiClient,
        values: Mapping[str, Any] | None = SUITE_VALUES,
        *,
        release: str = RELEASE,
        namespace: str = NAMESPACE,
        node: KubeletNode | None = None,
    ) -> None:
        self.cluster, self.api = cluster, api
        self.namespace, self.node = namespace, node or cluster.node
        self.manifests, self.crds = render_chart(values, release, namespace)
        self.work = cluster.work / ("flexnpu" if release == RELEASE else release)
        self.work.mkdir(exist_ok=True)
        self.flexnpu = shutil.which("flexnpu", path=str(Path(sys.executable).parent)) or "flexnpu"

    @property
    def native(self) -> Path:
        """Where build_native puts libflexnpu.so, the fake device libraries and the workload program."""
        return self.work / "native"

    def build_native(self) -> Path:
        if not (self.native / "workload_prog").is_file():
            build_native(self.native)
        return self.native

    def install_rbac_and_crds(self) -> None:
        # The CRDs are cluster-wide and the same in every release: another release of the suite may have made them.
        apply(self.api, self.crds, self.namespace, exist_ok=True)
        # flexnpu-high, cluster-wide like the CRDs: the examples' "high" pods name it.
        apply(self.api, [m for m in self.manifests if m["kind"] == "PriorityClass"], self.namespace, exist_ok=True)
        apply(self.api, [m for m in self.manifests if m["kind"] in RBAC_KINDS], self.namespace)

    def kubeconfig_for(self, component: str) -> Path:
        account = only(self.manifests, "ServiceAccount", component)["metadata"]["name"]
        token = service_account_token(self.api, account, namespace=self.namespace)
        return write_kubeconfig(
            self.work / f"{component}.kubeconfig", self.cluster.server, self.cluster.pki.ca.cert, token=token
        )

    def start_device_plugin(self, inventory: Sequence[Mapping[str, Any]]) -> Proc:
        self.device_plugin_metrics_port = free_port()
        path = self.work / "inventory.yaml"
        path.write_text(yaml.safe_dump({"cards": [dict(c) for c in inventory]}), encoding="utf-8")
        args = replace_flags(
            container_args(only(self.manifests, "DaemonSet", "node"), "device-plugin"),
            {
                "--kubelet-dir": str(self.node.device_plugin_dir),
                "--node-name": self.node.name,
                "--npu-smi": None,
                "--inventory": str(path),
                "--metrics-port": str(self.device_plugin_metrics_port),
                "--kubeconfig": str(self.kubeconfig_for("node")),
                "--journal": str(self.work / "deviceplugin" / "handshake.jsonl"),
                "--daemon-url": f"http://127.0.0.1:{self.daemon_port}",
                "--daemon-token-file": str(self.token_file),
            },
        )
        # The chart points the interposer, the ld.so.preload file and the shim directory at host paths; here they
        # live in the work dir (the shim directory is flexnpud's: start_daemon first).
        env = {
            **os.environ,
            "FLEXNPU_DEVICEPLUGIN_INTERPOSER_HOST_PATH": str(self.build_native() / "libflexnpu.so"),
            "FLEXNPU_DEVICEPLUGIN_PRELOAD_HOST_FILE": str(self.work / "preload" / "ld.so.preload"),
            "FLEXNPU_DEVICEPLUGIN_SHIM_SOCKET_DIR": str(self.socket_dir),
        }
        return self.cluster.spawn("device-plugin", [self.flexnpu, *args], env=env)

    def device_plugin_metric(self, name: str, labels: Mapping[str, str]) -> float:
        """One sample of the device plugin's /metrics (0 when it has none)."""
        return metric(f"http://127.0.0.1:{self.device_plugin_metrics_port}/metrics", name, labels)

    def start_extender(self, port: int | None = None, identity: str = "extender-0") -> Proc:
        """An extender replica on ``port`` (default: a free one), with the chart's args and this replica's address
        (127.0.0.1, the chart's pod IP) to publish in the Lease while it leads. ``extender-0`` is the replica the
        scheduler's config names (``extender_port``: a restart on it keeps it); another identity is one more
        replica, a process of that name."""
        port = port or free_port()
        if identity == "extender-0":
            self.extender_port = port
        args = replace_flags(
            container_args(only(self.manifests, "Deployment", "extender"), "extender"),
            {
                "--listen": f"127.0.0.1:{port}",
                "--namespace": self.namespace,
                "--identity": identity,
                "--advertise-host": "127.0.0.1",
                "--kubeconfig": str(self.kubeconfig_for("extender")),
                # The suite's extender serves no webhook (test_webhook.py starts one with its own certificate).
                "--webhook-listen": None,
                "--webhook-cert-file": None,
                "--webhook-key-file": None,
            },
        )
        proc = self.cluster.spawn("extender" if identity == "extender-0" else identity, [self.flexnpu, *args])
        ready = f"http://127.0.0.1:{port}/readyz"
        wait_for(f"{identity} /readyz (the chart's readiness probe)", lambda: http_ok(ready), 120, watch=[proc])
        return proc

    def install_daemon_token(self) -> Path:
        """The chart's daemon-token Secret created; its token (read back from the API) in a file, as mounted."""
        secret = only(self.manifests, "Secret", "daemon-token")
        apply(self.api, [secret], self.namespace)
        core: Any = k8s.CoreV1Api(self.api)
        [value] = core.read_namespaced_secret(secret["metadata"]["name"], self.namespace).data.values()
        self.token_file = self.work / "daemon-token"
        self.token_file.write_bytes(base64.b64decode(value))
        self.token_file.chmod(0o600)
        return self.token_file

    def daemon_config(self, port: int) -> str:
        """The chart's node ConfigMap ``flexnpud.conf`` with host, port and paths moved into the work dir."""
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(only(self.manifests, "ConfigMap", "node")["data"][DAEMON_CONFIG_KEY])
        self.socket_dir, state = self.work / "run", self.work / "daemon-state"
        self.socket_dir.mkdir(exist_ok=True)
        state.mkdir(exist_ok=True)
        parser["server"].update({"host": "127.0.0.1", "port": str(port)})
        parser["flexnpu"].update(
            {"persistent_file_dir": str(state), "token_file": str(self.token_file), "socket_dir": str(self.socket_dir)}
        )
        out = io.StringIO()
        parser.write(out)
        return out.getvalue()

    def daemon_pod(self) -> Manifest:
        """The node DaemonSet's pod on the suite's node, reduced to its flexnpud container.

        kubelet runs it through the suite's CRI (a local process whose pod IP is 127.0.0.1), so the operator finds
        it exactly as the chart tells it to: by the DaemonSet's labels, the container port named ``daemon`` and
        the pod IP. ConfigMap and Secret volumes are dropped (the CRI does
        not mount): the config and token files are in the work dir. The port is a free one, not the chart's.
        """
        template = only(self.manifests, "DaemonSet", "node")["spec"]["template"]
        [daemon] = [c for c in template["spec"]["containers"] if c["name"] == "flexnpud"]
        self.daemon_port = free_port()
        config = self.work / DAEMON_CONFIG_KEY
        config.write_text(self.daemon_config(self.daemon_port), encoding="utf-8")
        [port] = [p for p in daemon["ports"] if p["name"] == "daemon"]
        args = list(daemon["args"])
        args[args.index("--config") + 1] = str(config)
        container = {
            "name": daemon["name"],
            "image": daemon["image"],
            "command": [self.flexnpu],
            "args": args,
            "ports": [{**port, "containerPort": self.daemon_port}],
            "readinessProbe": self._probe(daemon["readinessProbe"], int(port["containerPort"])),
        }
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"flexnpu-node-{self.node.name}", "labels": template["metadata"]["labels"]},
            "spec": {
                "nodeName": self.node.name,
                "tolerations": template["spec"].get("tolerations", []),
                "hostNetwork": bool(template["spec"].get("hostNetwork", False)),
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 5,
                "containers": [container],
            },
        }

    def _probe(self, probe: Manifest, chart_port: int) -> Manifest:
        """The chart's probe; an exec probe (flexnpud on 127.0.0.1 without the host network) run with this
        interpreter against this run's port."""
        if "exec" not in probe:
            return probe
        command = [
            sys.executable if arg == "python" else arg.replace(f":{chart_port}/", f":{self.daemon_port}/")
            for arg in probe["exec"]["command"]
        ]
        return {**probe, "exec": {"command": command}}

    def start_daemon(self) -> Any:
        """flexnpud as the node DaemonSet's pod, once Ready (kubelet's readiness probe: the chart's)."""
        core: Any = k8s.CoreV1Api(self.api)
        pod = core.create_namespaced_pod(self.namespace, self.daemon_pod())

        def ready() -> Any:
            got = core.read_namespaced_pod(pod.metadata.name, self.namespace)
            conditions = {c.type: c.status for c in got.status.conditions or []}
            return got if conditions.get("Ready") == "True" else None

        return wait_for("flexnpud pod Ready", ready, 120, watch=self.cluster.procs, interval=0.5)

    def daemon_get(self, path: str) -> Any:
        """GET ``path`` of flexnpud with the daemon token, its JSON decoded."""
        return json.loads(self.daemon_text(path))

    def daemon_text(self, path: str) -> str:
        """GET ``path`` of flexnpud with the daemon token (its /metrics, say)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.daemon_port}{path}",
            headers={"Authorization": f"Bearer {self.token_file.read_text(encoding='utf-8').strip()}"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            body: bytes = resp.read()
        return body.decode("utf-8")

    def registrations(self) -> dict[str, dict[str, Any]]:
        """flexnpud's registrations by id (GET /device/flexnpu-info)."""
        info = self.daemon_get("/device/flexnpu-info")
        return {str(r["flexnpu_id"]): r for r in info["registrations"]}

    def start_operator(self) -> Proc:
        """The operator with the chart's args and env (token file, liveness and metrics ports adjusted)."""
        deployment = only(self.manifests, "Deployment", "operator")
        [container] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator"]
        self.operator_port = free_port()
        args = replace_flags(container["args"], {"--liveness": f"http://127.0.0.1:{self.operator_port}/healthz"})
        env = {**os.environ, **{e["name"]: str(e["value"]) for e in container["env"] if "value" in e}}
        env.update(
            {
                "FLEXNPU_OPERATOR_DAEMON_TOKEN_FILE": str(self.token_file),
                "FLEXNPU_OPERATOR_METRICS_PORT": str(free_port()),
                "KUBECONFIG": str(self.kubeconfig_for("operator")),
            }
        )
        proc = self.cluster.spawn("operator", [self.flexnpu, *args], env=env)
        url = f"http://127.0.0.1:{self.operator_port}/healthz"
        wait_for("operator /healthz (the chart's probes)", lambda: http_ok(url), 120, watch=[proc])
        return proc

    def scheduler_config(self, extender_port: int | None = None) -> dict[str, Any]:
        """The chart's KubeSchedulerConfiguration with the extender's URL pointed at an extender process
        (default: ``extender_port``, the first replica)."""
        text = only(self.manifests, "ConfigMap", "scheduler")["data"][SCHEDULER_CONFIG_KEY]
        config: dict[str, Any] = yaml.safe_load(text)
        for extender in config.get("extenders", []):
            extender["urlPrefix"] = f"http://127.0.0.1:{extender_port or self.extender_port}"
        return config

    def start_scheduler(self, extender_port: int | None = None) -> Proc:
        return self.cluster.start_scheduler(
            "flexnpu-scheduler",
            self.scheduler_config(extender_port),
            kubeconfig=self.kubeconfig_for("scheduler"),
            connection_only=True,
        )


def claim_registration_id(claim: Mapping[str, Any]) -> str:
    """The registration id a pod's container must be told for ``claim`` (FLEXNPU_CLAIM and FLEXNPU_ID)."""
    status_id = (claim.get("status") or {}).get("flexnpuId")
    if status_id:
        return str(status_id)
    meta = claim["metadata"]
    return registration_id(meta["namespace"], meta["name"], meta["uid"])


def claim_of_pod(api: k8s.ApiClient, namespace: str, pod_uid: str) -> dict[str, Any] | None:
    """The VNpuClaim owned by the pod of uid ``pod_uid``, or None while there is none (two would be a bug)."""
    listed: dict[str, Any] = k8s.CustomObjectsApi(api).list_namespaced_custom_object(  # type: ignore[assignment]
        names.CRD_GROUP, names.CRD_VERSION, namespace, names.CRD_PLURAL
    )
    owned = [c for c in listed["items"] if any(o["uid"] == pod_uid for o in c["metadata"].get("ownerReferences", []))]
    assert len(owned) <= 1, f"pod {pod_uid} owns {len(owned)} claims: {[c['metadata']['name'] for c in owned]}"
    return owned[0] if owned else None


def wait_registered(stack: Flexnpu, namespace: str, pod_uid: str, timeout: float = 120) -> dict[str, Any]:
    """The pod's claim once the operator has set phase Registered on it."""

    def registered() -> dict[str, Any] | None:
        claim = claim_of_pod(stack.api, namespace, pod_uid)
        phase = ((claim or {}).get("status") or {}).get("phase")
        return claim if phase == ClaimPhase.REGISTERED.value else None

    return wait_for(f"claim of pod {pod_uid} Registered", registered, timeout, watch=stack.cluster.procs, interval=0.5)
