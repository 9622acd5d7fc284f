"""``flexnpu shim run -- CMD...``: run a command with the in-pod runtime active in every Python process it starts.

It does what the device plugin does for a pod: puts the runtime's ``sitecustomize`` directory first on
PYTHONPATH and passes the FLEXNPU_* variables (flags override the environment), then execs nothing itself: the
command runs as a child and its exit status is ours.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from flexnpu import names
from flexnpu.shim.runtime import site

SITE_DIR = str(Path(site.__file__).resolve().parent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexnpu shim", description="Run a command under the in-pod runtime.")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run CMD with the runtime active (flexnpu shim run [options] -- CMD...)")
    run.add_argument("--claim", help=f"registration id to present to flexnpud (default ${names.ENV_CLAIM})")
    run.add_argument("--socket", help=f"flexnpud's grant socket (default ${names.ENV_SOCKET})")
    run.add_argument("--share", help=f"guaranteed share used while flexnpud is away (default ${names.ENV_SHARE})")
    run.add_argument("--memory-mib", help=f"device-memory cap in MiB (default ${names.ENV_MEMORY_MIB})")
    run.add_argument("--device", help=f"auto|npu|cuda|cpu|step|simnpu:<socket> (default ${names.ENV_DEVICE})")
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    return parser


def child_env(args: argparse.Namespace, base: dict[str, str]) -> dict[str, str]:
    """The environment of the child: runtime on PYTHONPATH, flags over inherited FLEXNPU_* variables."""
    env = dict(base)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = SITE_DIR + (os.pathsep + path if path else "")
    for value, key in ((args.claim, names.ENV_CLAIM), (args.socket, names.ENV_SOCKET),
                       (args.share, names.ENV_SHARE), (args.memory_mib, names.ENV_MEMORY_MIB),
                       (args.device, names.ENV_DEVICE)):
        if value is not None:
            env[key] = str(value)
    return env


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("flexnpu shim run: no command given (usage: flexnpu shim run [options] -- CMD...)", file=sys.stderr)
        return 2
    env = child_env(args, dict(os.environ))
    if not env.get(names.ENV_CLAIM):
        print(f"flexnpu shim run: warning: no --claim and no ${names.ENV_CLAIM}: the command runs ungated",
              file=sys.stderr)
    try:
        return subprocess.call(command, env=env)
    except FileNotFoundError:
        print(f"flexnpu shim run: command not found: {command[0]}", file=sys.stderr)
        return 127
    except KeyboardInterrupt:
        return 130
