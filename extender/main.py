"""``flexnpu extender``: the kube-scheduler extender process (DESIGN.md sections 9 and 14).

Builds the settings once (flags > FLEXNPU_EXTENDER_* environment > --config file), connects to the API server,
starts the node and pod watches and the leader election, and serves the extender verbs until SIGTERM. A bad flag
or setting exits 2 with one line naming it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from aiohttp import web

from flexnpu.errors import ConfigError
from flexnpu.extender.forward import BindForwarder, peer_url, url_for
from flexnpu.extender.informers import Informers
from flexnpu.extender.kube import KubeApi, KubeConfig, KubeWriter, load_kube_config
from flexnpu.extender.leader import ElectionConfig, LeaderElector
from flexnpu.extender.server import make_app
from flexnpu.extender.service import ExtenderService, Leadership, SoleReplica
from flexnpu.extender.settings import ENV_PREFIX, ExtenderSettings, parse_listen
from flexnpu.extender.state import ClusterState
from flexnpu.extender.webhook import make_webhook_app, server_tls
from flexnpu.heap import freeze_startup_heap
from flexnpu.settings import describe, load_settings

log = logging.getLogger("flexnpu.extender")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flexnpu extender",
        description="The kube-scheduler extender: places pods "
        "requesting huawei.com/vnpu on a node and a card (filter, prioritize, bind, preempt).",
    )
    p.add_argument("--config", type=Path, help="YAML/JSON settings file (keys as the long flags)")
    p.add_argument("--listen", help="HOST:PORT to serve on (default 0.0.0.0:8888)")
    p.add_argument("--policy", help="placement policy: binpack, spread, bestfit, fgd, default")
    p.add_argument(
        "--kubeconfig",
        help="kubeconfig file (default: KUBECONFIG, else ~/.kube/config, else the in-cluster service account)",
    )
    p.add_argument("--context", help="kubeconfig context (default: its current-context)")
    p.add_argument("--api-server", help="API server URL without authentication (tests)")
    p.add_argument("--node-cache-capable", default=None, help="true|false, as in KubeSchedulerConfiguration")
    p.add_argument(
        "--best-nodes-only", default=None, help="true|false: filter passes only the cheapest nodes (default true)"
    )
    p.add_argument("--lease-name", help="the Lease the replicas elect a leader with")
    p.add_argument("--namespace", help="namespace of the Lease")
    p.add_argument("--identity", help="this replica's name in the Lease (default: hostname-pid)")
    p.add_argument("--leader-elect", default=None, help="true|false (default true)")
    p.add_argument("--max-body-bytes", help="largest request body accepted")
    p.add_argument("--units-per-card", help="U, units per card (default 10)")
    p.add_argument("--webhook-listen", help="HOST:PORT of the admission webhook (HTTPS; default: no webhook)")
    p.add_argument("--webhook-cert-file", help="PEM serving certificate of the webhook")
    p.add_argument("--webhook-key-file", help="PEM private key of the webhook")
    p.add_argument("--webhook-max-body-bytes", help="largest AdmissionReview accepted (default 8 MiB)")
    p.add_argument("--scheduler-name", help="spec.schedulerName the webhook sets on vnpu pods (flexnpu-scheduler)")
    p.add_argument("--high-priority-namespaces", help="comma-separated namespaces allowed flexnpu.io/priority: high")
    p.add_argument("--high-priority-classes", help="comma-separated PriorityClasses allowed flexnpu.io/priority: high")
    p.add_argument("--high-priority-min-value", help="PriorityClass value allowing flexnpu.io/priority: high (1000000)")
    p.add_argument("--advertise-url", help="http(s)://HOST:PORT the other replicas forward binds to while this leads")
    p.add_argument("--advertise-host", help="this replica's address; the URL is http://HOST:<listen port>")
    p.add_argument("--forward-timeout", help="seconds a standby waits for the leader's answer to a bind (4.5)")
    p.add_argument("--bind-wait", help="seconds a bind waits for an earlier same-size pod's Allocate (3; 0: never)")
    p.add_argument("--allocation-timeout", help="seconds after its bind an unallocated pod stops holding others (30)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "log_level")}
    try:
        settings = load_settings(ExtenderSettings, flags=flags, env=os.environ, file=args.config, env_prefix=ENV_PREFIX)
        kube = kube_config(settings, os.environ)
        tls = webhook_tls(settings)
    except ConfigError as exc:
        print(f"flexnpu extender: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("settings: %s", describe(settings))
    asyncio.run(serve(settings, kube, tls=tls))
    return 0


def webhook_tls(settings: ExtenderSettings) -> ssl.SSLContext | None:
    """The webhook's TLS context when it is enabled (a ConfigError names an unusable file)."""
    if not settings.webhook_listen or settings.webhook_cert_file is None or settings.webhook_key_file is None:
        return None
    return server_tls(settings.webhook_cert_file, settings.webhook_key_file)


def kube_config(settings: ExtenderSettings, env: Mapping[str, str]) -> KubeConfig:
    if settings.api_server:
        return KubeConfig(server=settings.api_server.rstrip("/"), namespace=settings.namespace or "default")
    return load_kube_config(settings.kubeconfig, settings.context or None, env)


def identity(settings: ExtenderSettings) -> str:
    return settings.identity or f"{socket.gethostname()}-{os.getpid()}"


def advertise_url(settings: ExtenderSettings) -> str:
    """Where the other replicas reach this one ("" when neither advertise_url nor advertise_host is set)."""
    if settings.advertise_url:
        return peer_url(settings.advertise_url, "advertise_url")
    if settings.advertise_host:
        return url_for(settings.advertise_host, parse_listen(settings.listen)[1])
    return ""


async def serve(
    settings: ExtenderSettings,
    kube: KubeConfig,
    stop: asyncio.Event | None = None,
    *,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT when not given); with ``webhook_listen``, the webhook too."""
    stop = stop or _signal_event()
    tls = tls or webhook_tls(settings)
    me = identity(settings)
    async with KubeApi(kube) as api:
        state = ClusterState()
        elector = (
            LeaderElector(
                api,
                ElectionConfig(
                    namespace=settings.namespace or kube.namespace,
                    name=settings.lease_name,
                    identity=me,
                    lease_duration_s=int(settings.lease_duration),
                    renew_deadline_s=settings.renew_deadline,
                    retry_period_s=settings.retry_period,
                    advertise_url=advertise_url(settings),
                ),
            )
            if settings.leader_elect
            else None
        )
        leadership: Leadership = elector if elector is not None else SoleReplica()
        informers = Informers(api, state)
        service = ExtenderService(
            state,
            KubeWriter(api),
            policy=settings.policy,
            units=settings.units,
            leadership=leadership,
            identity=me,
            synced=informers.synced.is_set,
            bind_wait=settings.bind_wait,
            allocation_timeout=settings.allocation_timeout,
            best_nodes_only=settings.best_nodes_only,
        )
        forwarder = (
            BindForwarder(elector, identity=me, timeout_s=settings.forward_timeout) if elector is not None else None
        )
        # No access log: kube-scheduler calls filter, prioritize and bind per pod (a log line each, on the path that
        # decides scheduling throughput); /metrics counts requests by verb and status instead.
        app = make_app(service, max_body_bytes=settings.max_body_bytes, forwarder=forwarder)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = parse_listen(settings.listen)
        await web.TCPSite(runner, host, port).start()
        log.info("serving the extender on %s:%d as %s, reachable at %s", host, port, me, advertise_url(settings) or "-")
        webhook = await _start_webhook(settings, tls)
        tasks = [asyncio.create_task(informers.run()), asyncio.create_task(_freeze_when_synced(informers.synced))]
        if elector is not None:
            tasks.append(asyncio.create_task(elector.run()))
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await service.drain()
            await runner.cleanup()
            if forwarder is not None:
                await forwarder.close()
            if webhook is not None:
                await webhook.cleanup()


async def _freeze_when_synced(synced: asyncio.Event) -> None:
    """The heap frozen once the first lists are in: the imports and the cluster's nodes, pods and claims as listed
    stay out of every later full collection (one of them, unfrozen, took 170 ms at 5,000 nodes while kube-scheduler
    waited on a filter)."""
    await synced.wait()
    log.info("caches synced; heap frozen: %d objects out of the full collections", freeze_startup_heap())


async def _start_webhook(settings: ExtenderSettings, tls: ssl.SSLContext | None) -> web.AppRunner | None:
    if tls is None:
        return None
    runner = web.AppRunner(make_webhook_app(settings.admission, max_body_bytes=settings.webhook_max_body_bytes))
    await runner.setup()
    host, port = parse_listen(settings.webhook_listen)
    await web.TCPSite(runner, host, port, ssl_context=tls).start()
    log.info("serving the admission webhook on https://%s:%d (/mutate, /validate)", host, port)
    return runner


def _signal_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
