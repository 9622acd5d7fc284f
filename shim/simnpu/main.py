"""``flexnpu simnpu``: serve simulated cards on a unix socket until interrupted (SIGINT or SIGTERM)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from flexnpu.cards import CARD_MODELS, card_model
from flexnpu.shim.simnpu.server import SimNpuServer

DEFAULT_SOCKET = "/tmp/flexnpu-simnpu.sock"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexnpu simnpu", description="A real-time simulated NPU that separate processes share."
    )
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help=f"unix socket to serve on (default {DEFAULT_SOCKET})")
    parser.add_argument("--model", default="910B3", choices=sorted(CARD_MODELS), help="card model (default 910B3)")
    parser.add_argument("--cards", type=int, default=1, help="number of simulated cards (default 1)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.cards <= 64:
        print(f"flexnpu simnpu: --cards={args.cards}: must be in 1..64", file=sys.stderr)
        return 2
    server = SimNpuServer(args.socket, card_model(args.model), cards=args.cards)
    try:
        server.start()
    except OSError as exc:
        print(f"flexnpu simnpu: --socket={args.socket}: cannot listen: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"flexnpu simnpu: {args.cards} x {args.model} on {args.socket}", flush=True)
    while not done.wait(1.0):
        pass
    server.stop()
    return 0
