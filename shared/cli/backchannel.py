"""`orchestrator backchannel`: ferryman's replies on RabbitMQ into step events for the broker
(QUEUE_BACKEND=amqp; shared.interop.backchannel, docs/oih.md)."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path
from typing import Any

from shared.clock import SystemClock
from shared.interop.backchannel import Backchannel, HttpSender, run_backchannel
from shared.local.session import DEFAULT_STATE_DIR, RunSession
from shared.settings import is_amqp_url


def cmd_backchannel(args: argparse.Namespace) -> int:
    from shared.runtime.logs import configure_logging
    from shared.security.redact import install_redaction
    from shared.store import connect

    session = RunSession.load(Path(args.state_dir))
    found = {**(session.env if session else {}), **os.environ}
    amqp_url = args.amqp or found.get("AMQP_URL") or ""
    sink = args.broker or found.get("K_SINK") or (session.broker_url if session else "")
    problems = []
    if not is_amqp_url(amqp_url):
        problems.append("AMQP_URL (or --amqp): the amqp:// URL of the step transport's RabbitMQ")
    if not sink:
        problems.append("--broker (or K_SINK): where the step events go")
    if not found.get("REDIS_URL"):
        problems.append("REDIS_URL: where replies are counted")
    if len(found.get("ORCHESTRATOR_KEY", "").encode()) < 32:
        problems.append("ORCHESTRATOR_KEY: verifies replies, signs the events' step tokens")
    if problems:
        raise SystemExit("orchestrator backchannel needs: " + "; ".join(problems))
    configure_logging("backchannel")
    key = found["ORCHESTRATOR_KEY"]
    install_redaction([key])
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    if args.metrics_port:
        serve_metrics(args.metrics_port, args.metrics_host)

    def started(_: Backchannel) -> None:
        print(f"backchannel: rabbitmq → {sink}", flush=True)

    done = run_backchannel(
        amqp_url, connect(found["REDIS_URL"]), key, SystemClock(), HttpSender(sink), stop,
        started=started,
    )  # fmt: skip
    print(f"backchannel: stopped ({done.sent} sent, {sum(done.ignored.values())} ignored)")
    return 0


def serve_metrics(port: int, host: str) -> int:
    """Serves the process's Prometheus series (orchestrator_backchannel_replies among them) on
    http://host:port/metrics from a daemon thread; returns the port (0 picks a free one)."""
    from prometheus_client import start_http_server

    from shared.runtime.metrics import REGISTRY

    server, _ = start_http_server(port, addr=host, registry=REGISTRY)
    bound = int(server.server_address[1])
    print(f"backchannel: metrics on http://{host}:{bound}/metrics", flush=True)
    return bound


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "backchannel", help="ferryman's replies on RabbitMQ (QUEUE_BACKEND=amqp) into step events"
    )
    parser.add_argument("--amqp", help="AMQP URL of the step transport (AMQP_URL)")
    parser.add_argument("--broker", help="where step events go (default K_SINK / make run's)")
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="a running make run")
    parser.add_argument(
        "--metrics-port", type=int, default=0,
        help="serve /metrics on this port (default 0: not served; the Deployment uses 9090)",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-host", default="0.0.0.0", help="the address /metrics listens on (0.0.0.0)"
    )
    parser.set_defaults(func=cmd_backchannel)
