"""Reading what kubelet passed to the suite's CRI server, and what the started process really got.

The CRI server writes each CreateContainer request as ``<seq>-<container id>.json`` (protobuf JSON of
runtime.v1.CreateContainerRequest), each started process's pid as ``<container id>.pid``, and what it bind-mounted
in the container's mount namespace (and skipped: a source missing on this host) as ``<container id>.mounts.json``.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ContainerRecord:
    """One CreateContainer request kubelet sent, in arrival order ``seq``."""

    seq: int
    container_id: str
    request: dict[str, Any]

    @property
    def pod(self) -> tuple[str, str]:
        meta = self.request["sandboxConfig"]["metadata"]
        return meta.get("namespace", ""), meta["name"]

    @property
    def container_name(self) -> str:
        name: str = self.request["config"]["metadata"]["name"]
        return name

    @property
    def env(self) -> dict[str, str]:
        """The container's environment (CRI KeyValue values are bytes: base64 in protobuf JSON)."""
        return {
            e["key"]: base64.b64decode(e.get("value", "")).decode(errors="replace")
            for e in self.request["config"].get("envs", [])
        }

    @property
    def devices(self) -> list[dict[str, str]]:
        devices: list[dict[str, str]] = self.request["config"].get("devices", [])
        return devices

    @property
    def mounts(self) -> list[dict[str, Any]]:
        mounts: list[dict[str, Any]] = self.request["config"].get("mounts", [])
        return mounts

    @property
    def annotations(self) -> dict[str, str]:
        annotations: dict[str, str] = self.request["config"].get("annotations", {})
        return annotations


CDI_SUFFIX = ".cdi.json"  # the CRI's record of a container's resolved CDI edits, beside its request
_REQUEST = re.compile(r"(\d+)-([0-9a-f]+)\.json")


def records(directory: Path) -> list[ContainerRecord]:
    """Every CreateContainer request so far, oldest first."""
    found = []
    for path in directory.glob("*.json"):
        match = _REQUEST.fullmatch(path.name)
        if match is None:
            continue
        found.append(ContainerRecord(int(match[1]), match[2], json.loads(path.read_text(encoding="utf-8"))))
    return sorted(found, key=lambda r: r.seq)


def mounts_applied(directory: Path, record: ContainerRecord) -> dict[str, list[dict[str, Any]]] | None:
    """What the CRI bind-mounted in the container's namespace (``applied``) and skipped (``skipped``, with a
    ``reason``), each entry with ``source``, ``target``, ``readOnly`` and ``origin``; None before it started."""
    path = directory / f"{record.container_id}.mounts.json"
    if not path.is_file():
        return None
    body: dict[str, list[dict[str, Any]] | None] = json.loads(path.read_text(encoding="utf-8"))
    return {key: list(body.get(key) or []) for key in ("applied", "skipped")}


def cdi_edits(directory: Path, record: ContainerRecord) -> dict[str, Any] | None:
    """What the CRI resolved from the container's CDI devices (names, env, deviceNodes, mounts), if it had any."""
    path = directory / f"{record.seq:06d}-{record.container_id}{CDI_SUFFIX}"
    if not path.is_file():
        return None
    edits: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return edits


def records_of(directory: Path, namespace: str, pod: str) -> list[ContainerRecord]:
    return [r for r in records(directory) if r.pod == (namespace, pod)]


def process_pid(directory: Path, record: ContainerRecord) -> int | None:
    """The pid of the record's started process, or None before StartContainer."""
    try:
        return int((directory / f"{record.container_id}.pid").read_text(encoding="ascii"))
    except FileNotFoundError:
        return None


def process_env(pid: int, timeout: float = 30.0) -> dict[str, str]:
    """The environment the kernel gave the container's command, process ``pid`` (/proc/PID/environ), once the
    process runs it: the CRI server starts ``realk8s container-init`` there, which makes the container's mounts and
    then execs the command, and while the kernel sets up that exec the file reads empty."""
    deadline = time.monotonic() + timeout
    while True:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        if (raw and argv[1:2] != [b"container-init"]) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    pairs = [item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item]
    return {key: value for key, _, value in pairs}


def container_log(record: ContainerRecord) -> str:
    """What the container's process wrote (stdout and stderr), from the CRI log file kubelet asked for (the API
    server's pod log proxy needs a node address, which the suite's nodes do not have)."""
    directory = record.request["sandboxConfig"].get("logDirectory", "")
    name = record.request["config"].get("logPath", "")
    if not directory or not name:
        return ""
    try:
        lines = (Path(directory) / name).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "".join(line.split(" ", 3)[3] + "\n" for line in lines if line.count(" ") >= 3)
