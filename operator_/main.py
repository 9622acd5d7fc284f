"""``flexnpu operator``: runs the kopf operator that reconciles VNpuClaims into node-daemon registrations.

Options are kopf's own (``--standalone``, ``--namespace``/``-n``, ``--all-namespaces``/``-A``, ``--peering``,
``--priority``, ``--liveness``, ``--log-format``, ``--verbose``, ``--debug``, ``--quiet``) plus ``--config`` (a
YAML/JSON settings file) and the few settings tests and benchmarks set from the command line; every setting
also reads ``FLEXNPU_OPERATOR_<NAME>`` from the environment. Several replicas coordinate through kopf peering
(KopfPeering / ClusterKopfPeering named ``--peering``, default ``flexnpu``): one handles claims, the others wait.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import kopf

from flexnpu import names
from flexnpu.errors import FlexnpuError
from flexnpu.operator.handlers import Runtime, build_registry
from flexnpu.operator.settings import ENV_PREFIX, OperatorSettings
from flexnpu.settings import describe, load_settings

log = logging.getLogger("flexnpu.operator")
PEERING_NAME = "flexnpu"
KOPF_STATUS_FIELD = "kopf"  # status.kopf.progress, status.kopf.last-handled-configuration
_RANDOM = random.SystemRandom()


def parser(prog: str = "flexnpu operator") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Reconcile VNpuClaims into flexnpud registrations (kopf).")
    p.add_argument("--config", type=Path, default=None, metavar="FILE", help="settings file (YAML or JSON)")
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable; globs as kopf allows); default: all",
    )
    p.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces (the default)")
    p.add_argument("--standalone", action="store_true", help="no peering: ignore other replicas")
    p.add_argument(
        "--peering",
        default=None,
        metavar="NAME",
        help=f"kopf peering object to coordinate replicas (default: {PEERING_NAME}, used if present)",
    )
    p.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority of this replica (default with --peering: a random one, so that replicas "
        "differ: kopf freezes replicas of equal priority)",
    )
    p.add_argument(
        "--liveness", default=None, metavar="URL", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    p.add_argument(
        "--log-format",
        choices=[f.name.lower() for f in kopf.LogFormat],
        default="full",
        help="kopf's log format (json for structured logs)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("-d", "--debug", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--api-server", default=None, metavar="URL", help="Kubernetes API URL without auth (tests)")
    p.add_argument(
        "--daemon-url-template",
        default=None,
        metavar="URL",
        help="static daemon URL, {node} replaced by the node name (skips the pod lookup)",
    )
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port (0: off)")
    p.add_argument(
        "--resync-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds between re-checks of every claim",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.namespace and args.all_namespaces:
        print("flexnpu operator: --namespace and --all-namespaces exclude each other", file=sys.stderr)
        return 2
    flags = {
        "api_server": args.api_server,
        "daemon_url_template": args.daemon_url_template,
        "metrics_port": args.metrics_port,
        "resync_interval": args.resync_interval,
    }
    try:
        settings = load_settings(OperatorSettings, flags=flags, env=os.environ, file=args.config, env_prefix=ENV_PREFIX)
    except FlexnpuError as exc:
        print(f"flexnpu operator: {exc}", file=sys.stderr)
        return 2
    kopf.configure(
        verbose=args.verbose, debug=args.debug, quiet=args.quiet, log_format=kopf.LogFormat[args.log_format.upper()]
    )
    log.info("settings: %s", describe(settings))
    priority = replica_priority(args.priority, args.peering, args.standalone)
    if priority is not None:
        log.info("peering %r with priority %d: the replica of highest priority handles claims", args.peering, priority)
    kopf.run(
        registry=build_registry(Runtime(settings)),
        settings=kopf_settings(peering=args.peering),
        standalone=args.standalone or None,
        priority=priority,
        peering_name=args.peering,
        liveness_endpoint=args.liveness,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
    )
    return 0


def replica_priority(
    given: int | None, peering: str | None, standalone: bool, draw: Callable[[int, int], int] = _RANDOM.randint
) -> int | None:
    """The peering priority: the one given, else a random one when peering (kopf pauses every replica when two
    share the highest priority, so replicas of one Deployment must differ), else kopf's default."""
    if given is not None or standalone or peering is None:
        return given
    return draw(1, 1_000_000)


def kopf_settings(*, peering: str | None = None) -> kopf.OperatorSettings:
    """kopf's settings for this operator: our finalizer, kopf's state in the claim's status, quiet Events.

    kopf's state (each handler's progress and the last handled spec) lives in ``status.kopf``, beside what the
    handlers write there, so that handling a claim is one PATCH of its status subresource: in annotations it
    was a second PATCH of the object, one more write and watch event per claim on the API server. Claims
    handled by an operator that kept it in ``flexnpu.io/`` annotations are reconciled once more after an
    upgrade (no state in their status yet), which registers nothing twice."""
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = names.CLAIM_FINALIZER
    settings.persistence.progress_storage = kopf.StatusProgressStorage(name=KOPF_STATUS_FIELD)
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(name=KOPF_STATUS_FIELD)
    settings.peering.name = peering or PEERING_NAME
    settings.posting.reporting_component = "flexnpu-operator"
    settings.posting.reporting_instance = os.environ.get("HOSTNAME", "flexnpu-operator")
    settings.posting.level = logging.WARNING  # the handlers post their own Events; kopf's would repeat them
    return settings
