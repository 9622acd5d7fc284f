"""The ``flexnpu`` command: one entry point, every component a subcommand (DESIGN.md section 14).

Each subcommand lives in its component's package as ``main(argv) -> int`` and owns its flags; this module only
dispatches, so importing it stays cheap and a component's dependencies load only when it runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from flexnpu import __version__


@dataclass(frozen=True)
class Command:
    module: str
    usage: str
    summary: str


COMMANDS: dict[str, Command] = {
    "demo": Command(
        "flexnpu.shim.demo",
        "[--json] [--seconds N] [--plot FILE.png]",
        "run a simulated 910B3 node with two batch tenants (2:8) and a latency-critical one",
    ),
    "daemon": Command(
        "flexnpu.shim.daemon.main",
        "--config flexnpud.conf",
        "the node daemon flexnpud: registrations, slice scheduler, grant socket",
    ),
    "deviceplugin": Command(
        "flexnpu.deviceplugin.main",
        "[--kubelet-dir DIR] [--node-name NAME] [--npu-smi CMD | --inventory FILE] [--units-per-card U]",
        "the kubelet device plugin advertising huawei.com/vnpu units",
    ),
    "dra-plugin": Command(
        "flexnpu.dra.main",
        "[--node-name NAME] [--npu-smi CMD | --inventory FILE] [--daemon-url URL]",
        "the DRA kubelet plugin of driver npu.flexnpu.io (resource.k8s.io/v1 claims)",
    ),
    "extender": Command(
        "flexnpu.extender.main",
        "[--listen ADDR] [--policy NAME]",
        "the kube-scheduler extender placing pods on nodes and cards",
    ),
    "operator": Command(
        "flexnpu.operator.main", "[kopf options]", "the operator reconciling VNpuClaims into node-daemon registrations"
    ),
    "shim": Command("flexnpu.shim.cli", "run -- CMD...", "run a command under the in-pod time-slicing runtime"),
    "simnpu": Command(
        "flexnpu.shim.simnpu.main", "[--socket PATH] [--model 910B3]", "a simulated NPU that separate processes share"
    ),
    "bench": Command(
        "flexnpu.bench.cli",
        "NAME [--json] [--out FILE]",
        "run one benchmark (share, priority, overhead, idle, grant, placement, extender, deviceplugin, operator)",
    ),
    "status": Command(
        "flexnpu.shim.status", "[--node NAME]", "per card: units, memory, tenants, achieved share, wait p99"
    ),
}


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        f"usage: flexnpu [--version] COMMAND [ARGS...]  (flexnpu {__version__})",
        "",
        "Share Ascend 910B NPUs between Kubernetes pods.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += ["", "Run 'flexnpu COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"flexnpu {__version__}")
        return 0
    name, rest = args[0], args[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"flexnpu: unknown command {name!r} (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    return run(command, rest)


def run(command: Command, rest: list[str]) -> int:
    module = importlib.import_module(command.module)
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
