"""``flexnpu daemon --config flexnpud.conf`` (also the ``flexnpud`` console script): starts the node daemon.

Start-up order: config, token and cards are read and validated first (any problem ends the process with one
line naming the key); then logging, the HTTP port is taken (so a second daemon stops before it touches the
first one's grant socket), the grant server starts, the persisted registrations are restored, and only then is
the API served, so that a client that reaches it finds the registrations and the grant socket in place. The
memory watch (``memwatch``) starts with the API and stops before the grant server.
SIGTERM and SIGINT stop the API, then the grant server, and exit 0. The registrations' shared-memory slots stay
on disk through any stop (running pods keep them mapped, bind mounts pin their files): the next start adopts them
in place (``flexnpu.shim.grant.shmgrants``), so a restart or a rollout never cuts a running pod off its grants.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from flexnpu.cards import Card
from flexnpu.errors import ConfigError, FlexnpuError
from flexnpu.heap import freeze_startup_heap
from flexnpu.shim.core.admission import Capacity
from flexnpu.shim.daemon.api import app_runner
from flexnpu.shim.daemon.config import (
    DaemonSettings,
    OneLineParser,
    configure_logging,
    describe_settings,
    load_config,
    read_token,
)
from flexnpu.shim.daemon.devices import resolve_devices
from flexnpu.shim.daemon.grant import GrantHost, build_grant_server
from flexnpu.shim.daemon.memwatch import build_memory_watch
from flexnpu.shim.daemon.service import DaemonService
from flexnpu.shim.daemon.store import RegistrationStore

log = logging.getLogger("flexnpu.shim.daemon")


@dataclass(frozen=True)
class Startup:
    """What the daemon validated before starting anything."""

    settings: DaemonSettings
    warnings: list[str]
    token: str
    cards: list[Card]
    grant: GrantHost


def parser(prog: str) -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=prog,
        description="flexnpud, the flexnpu node daemon: registration API, "
        "admission, persistence and the grant socket of the time-slicing runtime.",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="flexnpud.conf (INI); without it every key takes its default",
    )
    return p


def main(argv: Sequence[str] | None = None, prog: str = "flexnpu daemon") -> int:
    args = parser(prog).parse_args(argv)
    try:
        startup = prepare(args.config)
    except FlexnpuError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        configure_logging(startup.settings)
    except OSError as exc:
        print(
            f"{prog}: [logger] log_file={startup.settings.log_file!r}: cannot be opened ({exc.strerror})",
            file=sys.stderr,
        )
        return 2
    try:
        return asyncio.run(serve(startup))
    except (FlexnpuError, OSError) as exc:
        if startup.settings.log_file:
            log.error("%s", exc)
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


def console_main() -> None:
    """The ``flexnpud`` console script."""
    raise SystemExit(main(sys.argv[1:], prog="flexnpud"))


def prepare(config: Path | None) -> Startup:
    """Settings, token and cards, each validated; a ConfigError names the first bad key."""
    settings, warnings = load_config(config) if config else (DaemonSettings(), [])
    token = read_token(settings)
    cards = resolve_devices(settings.devices, settings.npu_smi)
    return Startup(settings, warnings, token, cards, build_grant_server(settings, cards))


async def serve(startup: Startup) -> int:
    """Run until SIGTERM or SIGINT."""
    settings = startup.settings
    for line in startup.warnings:
        log.warning("%s", line)
    log.info("settings: %s", describe_settings(settings))
    log.info("cards: %s", ", ".join(f"{c.index}:{c.model}({c.uuid})" for c in startup.cards))
    # The port is taken before the grant socket: a second daemon on the node fails here, before it could replace
    # the first one's grant socket. Connections wait in the backlog until the registrations are restored.
    listener = listen(settings.host, settings.port)
    try:
        start_grant_server(startup.grant, settings.socket_dir)
        try:
            service = DaemonService(
                startup.cards,
                Capacity(settings.quota, settings.oversubscription),
                RegistrationStore(settings.registrations_path),
                startup.grant,
            )
            service.restore()
            watch = build_memory_watch(
                settings.devices,
                settings.npu_smi,
                settings.socket_dir,
                lambda: service.registrations,
                settings.enforce_memory,
                settings.memory_watch_interval,
                settings.memory_source,
                settings.nvml_library,
            )
            service.watch_memory(watch.figures)
            watch.start()
            try:
                await _serve_http(service, startup.token, listener)
            finally:
                watch.stop()
        finally:
            startup.grant.stop()
    finally:
        listener.close()
    log.info("stopped")
    return 0


def start_grant_server(grant: GrantHost, socket_dir: str) -> None:
    """Start the grant server; a ConfigError naming ``[flexnpu] socket_dir`` when its socket cannot be made."""
    try:
        Path(socket_dir).mkdir(parents=True, exist_ok=True)
        grant.start()
    except OSError as exc:
        raise ConfigError("[flexnpu] socket_dir", socket_dir, f"grant socket cannot be created ({exc})") from exc


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; a ConfigError naming ``[server] port`` when that is impossible."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError("[server] host", host, f"cannot be used ({exc})") from exc
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        listener.close()
        raise ConfigError("[server] port", port, f"cannot listen on {host}:{port} ({exc.strerror})") from exc
    listener.setblocking(False)
    return listener


async def _serve_http(service: DaemonService, token: str, listener: socket.socket) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = app_runner(service, token)
    await runner.setup()
    try:
        await web.SockSite(runner, listener).start()
        host, port = listener.getsockname()[:2]
        log.info("listening on http://%s:%d (bearer token %s)", host, port, "required" if token else "not required")
        # Set up: from here a full collection walks only what the daemon allocates while it serves (one of the
        # start-up heap took 23-32 ms, every thread stopped, in the middle of `flexnpu bench native_share`).
        log.info("start-up heap frozen: %d objects out of the full collections", freeze_startup_heap())
        await stop.wait()
        log.info("signal received, stopping")
    finally:
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


if __name__ == "__main__":
    raise SystemExit(main())
