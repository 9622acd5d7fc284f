"""The real Kubernetes control plane and one real kubelet, on loopback, for the realk8s suite.

Every component is the upstream one, run from the realk8s multi-call binary that tests/realk8s/build.sh builds:
embedded etcd, kube-apiserver (Node + RBAC authorization, service-account token signing, client-certificate
authentication), kube-controller-manager, kube-scheduler and kubelet, whose container runtime is the binary's
small CRI server (containers are local processes; every CreateContainer request is recorded as JSON).

Kubelet's device manager listens on the fixed path /var/lib/kubelet/device-plugins/kubelet.sock whatever
--root-dir says, so kubelet runs in a private mount namespace (util-linux ``unshare``) where a tmpfs covers
/var/lib and the suite's own device-plugin directory is bound on /var/lib/kubelet/device-plugins: the host's
/var/lib is never touched and a device plugin outside the namespace uses ``ControlPlane.device_plugin_dir``.
In the same namespace, files holding the values kubelet wants cover the six kernel settings it would otherwise
write on the host (vm.overcommit_memory, kernel.panic_on_oops, ...); with protectKernelDefaults it never writes.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from realk8s_pki import CertPair, Pki, make_pki
from realk8s_procs import Proc, http_ok, wait_for

from flexnpu.waiting import free_port

NODE_NAME = "realk8s-node"
SERVICE_CIDR = "10.96.0.0/24"
KCM_CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "statefulset-controller",
    "root-ca-certificate-publisher-controller",
    "node-lifecycle-controller",
    "resourceclaim-controller",  # ResourceClaims from a pod's ResourceClaimTemplates (DRA mode)
)
DEVICE_PLUGIN_PATH = "/var/lib/kubelet/device-plugins"
START_TIMEOUT = 180.0
# The kernel settings kubelet's container manager insists on (pkg/kubelet/cm setupKernelTunables).
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}


def binary_path() -> Path:
    """Where build.sh puts the binary (FLEXNPU_REALK8S_BIN overrides)."""
    explicit = os.environ.get("FLEXNPU_REALK8S_BIN")
    if explicit:
        return Path(explicit)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    bin_dir = os.environ.get("FLEXNPU_REALK8S_BIN_DIR")
    return (Path(bin_dir) if bin_dir else cache / "flexnpu-realk8s" / "bin") / "realk8s"


def write_kubeconfig(
    path: Path, server: str, ca: Path, *, client: CertPair | None = None, token: str | None = None
) -> Path:
    """A kubeconfig for ``server`` with either a client certificate or a bearer token."""
    user: dict[str, str] = {}
    if client is not None:
        user = {"client-certificate": str(client.cert), "client-key": str(client.key)}
    if token is not None:
        user = {"token": token}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "realk8s",
        "clusters": [{"name": "realk8s", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "realk8s", "context": {"cluster": "realk8s", "user": "user"}}],
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    path.chmod(0o600)
    return path


@dataclass
class KubeletNode:
    """One kubelet with its own CRI: name and the directory holding its state (all paths outside its namespace)."""

    name: str
    work: Path
    taints: tuple[dict[str, str], ...] = ()

    @property
    def kubelet_root(self) -> Path:
        return self.work / "kubelet"

    @property
    def device_plugin_dir(self) -> Path:
        return self.work / "device-plugins"

    @property
    def plugins_registry(self) -> Path:
        """Where kubelet's plugin watcher finds registration sockets (DRA drivers): ``<root-dir>/plugins_registry``."""
        return self.kubelet_root / "plugins_registry"

    @property
    def plugins_dir(self) -> Path:
        return self.kubelet_root / "plugins"

    @property
    def cri_socket(self) -> Path:
        return self.work / "cri" / "cri.sock"

    @property
    def cri_records(self) -> Path:
        return self.work / "cri" / "records"

    @property
    def cdi_dir(self) -> Path:
        """The CDI spec directory the node's CRI resolves ContainerConfig.CDIDevices against."""
        return self.work / "cdi"


@dataclass
class ControlPlane:
    """Ports, paths and processes of one control plane; ``start`` brings it up, ``stop`` leaves nothing."""

    binary: Path
    work: Path
    procs: list[Proc] = field(default_factory=list)
    apiserver_port: int = 0

    node_name: str = NODE_NAME
    nodes: dict[str, KubeletNode] = field(default_factory=dict)
    controllers: tuple[str, ...] = KCM_CONTROLLERS

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    @property
    def node(self) -> KubeletNode:
        """The suite's first node (device-plugin mode): its paths lie directly in the work dir."""
        return self.nodes.setdefault(self.node_name, KubeletNode(self.node_name, self.work))

    @property
    def kubelet_root(self) -> Path:
        return self.node.kubelet_root

    @property
    def device_plugin_dir(self) -> Path:
        """The device-plugin directory as seen outside kubelet's mount namespace."""
        return self.node.device_plugin_dir

    @property
    def cri_socket(self) -> Path:
        return self.node.cri_socket

    @property
    def cri_records(self) -> Path:
        return self.node.cri_records

    @property
    def admin_kubeconfig(self) -> Path:
        return self.work / "admin.kubeconfig"

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, self.logs / f"{name}.log", env=env)
        self.procs.append(proc)
        return proc

    def component(self, name: str, *flags: str) -> Proc:
        return self.spawn(name, [str(self.binary), name, *flags])

    def start(self, with_node: bool = True) -> None:
        """The control plane and the default-scheduler; the first kubelet too unless ``with_node`` is false."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pki = make_pki(self.work / "pki")
        etcd = self._start_etcd()
        self.apiserver_port = free_port()
        apiserver = self._start_apiserver(etcd)
        wait_for("kube-apiserver /readyz", self._ready, START_TIMEOUT, watch=[etcd, apiserver])
        self._start_controller_manager()
        self.default_scheduler = self.start_scheduler(
            "kube-scheduler", {"profiles": [{"schedulerName": "default-scheduler"}]}
        )
        if with_node:
            self._start_node(self.node)

    def start_node(self, name: str, taints: tuple[dict[str, str], ...] = ()) -> KubeletNode:
        """Another kubelet (with its own CRI, mount namespace and directories) registering Node ``name``.

        ``taints`` (kubelet's registerWithTaints) keep the suite's other pods off it.
        """
        node = KubeletNode(name, self.work / "nodes" / name, taints)
        self.nodes[name] = node
        self._start_node(node)
        return node

    def _start_node(self, node: KubeletNode) -> None:
        for d in (node.kubelet_root, node.device_plugin_dir, node.cri_records, node.cdi_dir):
            d.mkdir(parents=True, exist_ok=True)
        cri = self._start_cri(node)
        wait_for(f"CRI socket of {node.name}", lambda: True if node.cri_socket.exists() else None, 30, watch=[cri])
        self._start_kubelet(node)

    def restart_kubelet(self, node: KubeletNode) -> Proc:
        """Stop the node's kubelet (SIGTERM, as a systemd restart does) and start it again on the same root-dir:
        its CRI, and so the node's containers, keep running."""
        name = f"kubelet{self._suffix(node)}"
        [old] = [p for p in self.procs if p.name == name]
        old.stop()
        self.procs.remove(old)
        return self._start_kubelet(node)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def _ready(self) -> bool | None:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        ctx.load_cert_chain(str(self.admin.cert), str(self.admin.key))
        return http_ok(f"{self.server}/readyz", ctx)

    def _start_etcd(self) -> Proc:
        port = free_port()
        self.etcd_url = f"http://127.0.0.1:{port}"
        etcd = self.component(
            "etcd",
            "--data-dir",
            str(self.work / "etcd"),
            "--listen-client",
            self.etcd_url,
            "--listen-peer",
            f"http://127.0.0.1:{free_port()}",
        )

        def healthy() -> bool | None:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=5) as resp:
                return True if json.load(resp).get("health") == "true" else None

        wait_for("etcd /health", healthy, START_TIMEOUT, watch=[etcd])
        return etcd

    def _start_apiserver(self, etcd: Proc) -> Proc:
        pki: Pki = self.pki
        self.admin = pki.client("admin", "realk8s-admin", "system:masters")
        write_kubeconfig(self.admin_kubeconfig, self.server, pki.ca.cert, client=self.admin)
        kubelet_client = pki.client("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
        return self.component(
            "kube-apiserver",
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={self.work / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving.cert}",
            f"--tls-private-key-file={pki.serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            f"--kubelet-client-certificate={kubelet_client.cert}",
            f"--kubelet-client-key={kubelet_client.key}",
            "--endpoint-reconciler-type=none",  # it refuses a loopback advertise address
            "--profiling=false",
            "--enable-priority-and-fairness=false",
            "--v=1",
        )

    def _start_controller_manager(self) -> Proc:
        cert = self.pki.client("kube-controller-manager", "system:kube-controller-manager")
        kubeconfig = write_kubeconfig(self.work / "kcm.kubeconfig", self.server, self.pki.ca.cert, client=cert)
        return self.component(
            "kube-controller-manager",
            f"--kubeconfig={kubeconfig}",
            f"--controllers={','.join(self.controllers)}",
            f"--service-account-private-key-file={self.pki.service_account_key}",
            f"--root-ca-file={self.pki.ca.cert}",
            "--leader-elect=false",
            "--secure-port=0",
            "--use-service-account-credentials=true",
            "--v=1",
        )

    def start_scheduler(
        self, name: str, config: dict[str, Any], kubeconfig: Path | None = None, connection_only: bool = False
    ) -> Proc:
        """A kube-scheduler named ``name`` from a KubeSchedulerConfiguration.

        The kubeconfig (default: a client certificate of system:kube-scheduler) is filled in; unless
        ``connection_only``, leader election is turned off and apiVersion/kind are added.
        """
        if kubeconfig is None:
            cert = self.pki.client(name, "system:kube-scheduler")
            kubeconfig = write_kubeconfig(self.work / f"{name}.kubeconfig", self.server, self.pki.ca.cert, client=cert)
        config = {**config, "clientConnection": {**config.get("clientConnection", {}), "kubeconfig": str(kubeconfig)}}
        if not connection_only:
            config = {
                "apiVersion": "kubescheduler.config.k8s.io/v1",
                "kind": "KubeSchedulerConfiguration",
                **config,
                "leaderElection": {"leaderElect": False},
            }
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return self.spawn(name, [str(self.binary), "kube-scheduler", f"--config={path}", "--secure-port=0", "--v=2"])

    def _suffix(self, node: KubeletNode) -> str:
        """Process-name suffix: none for the first node, ``-<name>`` for the others."""
        return "" if node.name == self.node_name else f"-{node.name}"

    def _start_cri(self, node: KubeletNode) -> Proc:
        return self.spawn(
            f"cri{self._suffix(node)}",
            [
                str(self.binary),
                "cri",
                "--socket",
                str(node.cri_socket),
                "--record-dir",
                str(node.cri_records),
                "--state-dir",
                str(node.work / "cri" / "state"),
                "--cdi-dir",
                str(node.cdi_dir),
            ],
        )

    def _namespace_script(self, node: KubeletNode) -> str:
        """Shell run in kubelet's private mount namespace before it execs kubelet ("$@").

        A tmpfs on /var/lib and on /var/log (kubelet's fixed /var/log/containers), the suite's device-plugin
        directory bound on kubelet's fixed path; and the kernel settings kubelet would otherwise write on the
        host covered by files that already hold the values it wants, so it reads them and writes nothing.
        """
        sysctls = node.work / "sysctl"
        sysctls.mkdir(exist_ok=True)
        steps = [
            "set -e",
            "mount -t tmpfs realk8s /var/lib",
            "mount -t tmpfs realk8s /var/log",
            f"mkdir -p {DEVICE_PLUGIN_PATH}",
            f"mount --bind {node.device_plugin_dir} {DEVICE_PLUGIN_PATH}",
        ]
        for name, value in KUBELET_SYSCTLS.items():
            fake = sysctls / name.replace("/", ".")
            fake.write_text(f"{value}\n", encoding="ascii")
            steps.append(f"mount --bind {fake} /proc/sys/{name}")
        return "\n".join([*steps, 'exec "$@"'])

    def _start_kubelet(self, node: KubeletNode) -> Proc:
        suffix = self._suffix(node)
        cert = self.pki.client(f"kubelet{suffix}", f"system:node:{node.name}", "system:nodes")
        kubeconfig = write_kubeconfig(node.work / "kubelet.kubeconfig", self.server, self.pki.ca.cert, client=cert)
        kubelet_port, healthz_port = free_port(), free_port()
        endpoint = f"unix://{node.cri_socket}"
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "authentication": {
                "x509": {"clientCAFile": str(self.pki.ca.cert)},
                "webhook": {"enabled": False},
                "anonymous": {"enabled": False},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": endpoint,
            "imageServiceEndpoint": endpoint,
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failCgroupV1": False,
            "failSwapOn": False,
            "localStorageCapacityIsolation": False,
            "evictionHard": {},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "resolvConf": "",
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "serializeImagePulls": False,
            "protectKernelDefaults": True,
            "registerNode": True,
            "registerWithTaints": [dict(t) for t in node.taints],
            "podLogsDir": str(node.work / "pod-logs"),
        }
        path = node.work / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        unshare = shutil.which("unshare") or "unshare"
        return self.spawn(
            f"kubelet{suffix}",
            [
                unshare,
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                self._namespace_script(node),
                "kubelet",
                str(self.binary),
                "kubelet",
                f"--config={path}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={node.kubelet_root}",
                f"--cert-dir={node.work / 'kubelet-pki'}",
                f"--hostname-override={node.name}",
                "--node-ip=127.0.0.1",
                "--v=2",
            ],
        )
