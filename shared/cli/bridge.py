"""`orchestrator bridge`: the hub's RabbitMQ event bus ↔ the broker (shared.interop.bridge)."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path
from typing import Any

from shared.clock import SystemClock
from shared.interop.bridge import Bridge, BridgeSettings
from shared.local.session import DEFAULT_STATE_DIR, RunSession
from shared.settings import is_amqp_url


def bridge_settings(args: argparse.Namespace, environ: dict[str, str]) -> BridgeSettings:
    session = RunSession.load(Path(args.state_dir))
    found = {**(session.env if session else {}), **environ}
    bus = args.event_bus or found.get("OIH_EVENT_BUS") or ""
    broker = args.broker or found.get("K_SINK") or (session.broker_url if session else "")
    problems = []
    if not is_amqp_url(bus):
        problems.append("OIH_EVENT_BUS (or --event-bus): an amqp:// URL of the hub's RabbitMQ")
    if not broker:
        problems.append("--broker (or K_SINK): the broker the events go to")
    hub_token = found.get("OIH_BRIDGE_TOKEN") or found.get("IAM_SERVICE_TOKEN")
    if not hub_token:
        problems.append("OIH_BRIDGE_TOKEN (or IAM_SERVICE_TOKEN): the hub service account's token")
    if not found.get("ORCHESTRATOR_KEY"):
        problems.append("ORCHESTRATOR_KEY: checks the events that go out are ours")
    if problems:
        raise SystemExit("orchestrator bridge needs: " + "; ".join(problems))
    return BridgeSettings(
        event_bus_url=bus,
        broker_url=broker,
        hub_token=hub_token or "",
        orchestrator_key=found["ORCHESTRATOR_KEY"],
        host=args.host,
        port=args.port,
    )


def cmd_bridge(args: argparse.Namespace) -> int:
    settings = bridge_settings(args, dict(os.environ))
    stop = threading.Event()
    bridge = Bridge(settings, SystemClock(), report=lambda line: print(line, flush=True)).start()
    print(
        f"bridge: event-bus → {settings.broker_url}; broker → event-bus at {bridge.url}", flush=True
    )
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    bridge.stop()
    return 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bridge", help="the hub's RabbitMQ event bus into the broker, and our status events back"
    )
    parser.add_argument("--event-bus", help="AMQP URL of the hub's RabbitMQ (OIH_EVENT_BUS)")
    parser.add_argument("--broker", help="where inbound events go (default K_SINK / make run's)")
    parser.add_argument("--host", default="127.0.0.1", help="where the outbound endpoint listens")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")))
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="a running make run")
    parser.set_defaults(func=cmd_bridge)
