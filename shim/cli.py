"""``flexnpu shim run -- CMD...``: run a command under the in-pod runtime, as the device plugin runs a pod.

What enforces is the native interposer: ``libflexnpu.so`` (``flexnpu.shim.native.library_path()``) is appended to
the child's ``LD_PRELOAD`` (after whatever is there already, never replacing it), with ``FLEXNPU_SHIM_DIR`` (the
directory holding flexnpud's card regions and slots) and ``FLEXNPU_ID`` (the registration whose slot the process
uses) from the flags, else from the environment (``FLEXNPU_ID`` falls back to the claim). A pod gets the same
library through a read-only ``/etc/ld.so.preload`` instead, which no variable turns off.

The Python step-level adapter still comes through the runtime's ``sitecustomize`` directory, put first on
PYTHONPATH, and the FLEXNPU_* variables it reads (flags override the environment). The command runs as a child
and its exit status is ours.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from flexnpu import names
from flexnpu.shim import native
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
    run.add_argument(
        "--shim-dir",
        help=f"flexnpud's card regions and slots (default ${native.ENV_SHIM_DIR}, else {native.DEFAULT_SHIM_DIR})",
    )
    run.add_argument(
        "--id", help=f"registration whose slot the interposer uses (default ${native.ENV_ID}, else the claim)"
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    return parser


def child_env(args: argparse.Namespace, base: dict[str, str]) -> dict[str, str]:
    """The environment of the child: runtime on PYTHONPATH, flags over inherited FLEXNPU_* variables."""
    env = dict(base)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = SITE_DIR + (os.pathsep + path if path else "")
    for value, key in (
        (args.claim, names.ENV_CLAIM),
        (args.socket, names.ENV_SOCKET),
        (args.share, names.ENV_SHARE),
        (args.memory_mib, names.ENV_MEMORY_MIB),
        (args.device, names.ENV_DEVICE),
    ):
        if value is not None:
            env[key] = str(value)
    if args.shim_dir is not None:
        env[native.ENV_SHIM_DIR] = args.shim_dir
    registration = args.id if args.id is not None else env.get(native.ENV_ID) or env.get(names.ENV_CLAIM)
    if registration:
        env[native.ENV_ID] = registration
    return env


def with_preload(env: dict[str, str], library: str) -> dict[str, str]:
    """``env`` with ``library`` appended to LD_PRELOAD (kept once; the loader splits on spaces and colons)."""
    current = env.get("LD_PRELOAD", "")
    entries = current.replace(" ", ":").split(":")
    if library in entries:
        return dict(env)
    return {**env, "LD_PRELOAD": f"{current}:{library}" if current.strip(": ") else library}


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("flexnpu shim run: no command given (usage: flexnpu shim run [options] -- CMD...)", file=sys.stderr)
        return 2
    try:
        library = native.library_path()
    except native.LibraryMissing as exc:
        print(f"flexnpu shim run: {exc}", file=sys.stderr)
        return 1
    env = with_preload(child_env(args, dict(os.environ)), str(library))
    if not env.get(native.ENV_ID):
        print(
            f"flexnpu shim run: warning: no --id, --claim, ${native.ENV_ID} or ${names.ENV_CLAIM}: the interposer "
            f"uses the only slot in the shim directory, else runs ungated",
            file=sys.stderr,
        )
    try:
        return subprocess.call(command, env=env)
    except FileNotFoundError:
        print(f"flexnpu shim run: command not found: {command[0]}", file=sys.stderr)
        return 127
    except KeyboardInterrupt:
        return 130
