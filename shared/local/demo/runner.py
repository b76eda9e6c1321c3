"""The demo: shows, not tells, that schedules skip when runs overlap, that a flooding tenant
cannot starve the others, and that a bad citizen is punished and restored.

- live (`make run`, unless DEMO=0 / --no-demo; or `orchestrator demo` next to a running one):
  the scenario (shared/local/demo/scenario.py) goes to the local broker as real events, control
  events with real tokens from the embedded IAM when auth is on; a rich table per tenant
  updates every second; on exit the summary and a PNG go to .run/demo/.
- headless (`orchestrator demo --headless --seconds N`): the same scenario through the four
  real functions in one process on simulated time (shared/local/demo/system.py), N simulated
  seconds in a few real ones; prints the summary and writes the same files.
The functions must run with shared/data/demo-policy.yaml (make run uses it with the demo) for
the effects to show within a minute or two.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from redis import Redis

from shared import store
from shared.clock import FakeClock
from shared.events import types as t
from shared.events.envelope import EXT_AUTH_TOKEN
from shared.local.demo import scenario
from shared.local.demo.board import Board, summary_text, write_outputs
from shared.model.policy import Policy, load_policy
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.local.session import RunSession

log = logging.getLogger(__name__)

DEMO_POLICY = scenario.DEMO_POLICY
DEFAULT_OUT_DIR = Path(".run") / "demo"
DEFAULT_HEADLESS_SECONDS = 150
# Simulated time starts 10 s before a full minute, so the first cron due times come at once.
HEADLESS_START = 1_767_225_650.0  # 2026-01-01T00:00:50Z
NO_DEPLOYMENT_WARNING_SECONDS = 30


# --------------------------------------------------------------------------- headless
def headless(
    seconds: int,
    *,
    redis: Redis,
    clock: FakeClock,
    policy: Policy,
    settings: Settings,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Runs the scenario for `seconds` simulated seconds; returns the summary."""
    from shared.adapters.component_repository import CatalogueComponentRepository
    from shared.local.demo.system import InProcessSystem

    board = Board(redis, policy, clock.now())
    board.start_from_now()
    system = InProcessSystem(redis, clock, policy, settings, CatalogueComponentRepository())

    def send(event_type: str, data: Any, *, tenant: str, user: str) -> None:
        system.send(event_type, data, source=scenario.SOURCE, tenant=tenant)

    scenario.seed(send)
    system.settle()
    for second in range(seconds):
        scenario.act(send, second)
        system.run_for(1)
        board.poll()
        board.sample(clock.now())
    summary = board.summary(
        float(seconds), extra={"mode": "headless", "bus": asdict(system.bus.stats)}
    )
    if out_dir is not None:
        paths = write_outputs(board, summary, out_dir)
        summary["files"] = {kind: str(path) for kind, path in paths.items()}
    return summary


def headless_in_own_redis(
    seconds: int, *, out_dir: Path | None, policy_file: Path = DEMO_POLICY
) -> dict[str, Any]:
    """The headless demo on a throw-away embedded Redis (never the one of a running system)."""
    from shared.local.embedded_redis import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="orchestrator-demo-") as data_dir:
        server = EmbeddedRedis(Path(data_dir), persist=False).start()
        try:
            redis = store.connect(server.url)
            settings = Settings.from_env(
                {
                    "REDIS_URL": server.url,
                    "ORCHESTRATOR_KEY": secrets.token_urlsafe(48),
                    "ORCHESTRATOR_AUTH": "off",
                    "ORCHESTRATOR_DEPLOY_DRIVER": "local",
                    "ORCHESTRATOR_POLICY_FILE": str(policy_file),
                    "K_SINK": "http://in-process.invalid/",
                }
            )
            return headless(
                seconds,
                redis=redis,
                clock=FakeClock(HEADLESS_START),
                policy=load_policy(str(policy_file)),
                settings=settings,
                out_dir=out_dir,
            )
        finally:
            server.stop()


# --------------------------------------------------------------------------- live
class BrokerSender:
    """Posts the scenario's events to the local broker, as the hub would (binary mode)."""

    def __init__(self, session: RunSession, *, timeout: float = 5.0) -> None:
        self.session = session
        self.http = requests.Session()
        self.timeout = timeout
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self.failures = 0
        self.last_failure = ""

    def _token(self, tenant: str, user: str) -> str | None:
        """A real IAM token for the flow's owner in its tenant (cached until near expiry)."""
        if not self.session.iam_url or not self.session.iam_service_token:
            return None  # auth is off in this session
        cached = self._tokens.get((tenant, user))
        if cached and cached[1] > time.time() + 60:
            return cached[0]
        import io

        from shared.local.embedded_iam import DEFAULT_TOKEN_SECONDS, print_token

        token = print_token(
            tenant,
            sub=user,
            permissions=("flows.control",),
            iam_url=self.session.iam_url,
            service_token=self.session.iam_service_token,
            out=io.StringIO(),
        )
        self._tokens[(tenant, user)] = (token, time.time() + DEFAULT_TOKEN_SECONDS)
        return token

    def send(self, event_type: str, data: Any, *, tenant: str, user: str) -> None:
        attributes = {
            "type": event_type,
            "source": scenario.SOURCE,
            "id": str(uuid.uuid4()),
            "tenant": tenant,
        }
        try:
            token = self._token(tenant, user) if event_type in t.CONTROL_TYPES else None
            if token:
                attributes[EXT_AUTH_TOKEN] = token
            headers, body = to_binary(CloudEvent(attributes, data))
            response = self.http.post(
                self.session.broker_url, headers=headers, data=body, timeout=self.timeout
            )
            if response.status_code >= 300:
                raise RuntimeError(f"broker answered {response.status_code}")
        except (requests.RequestException, RuntimeError) as exc:
            self.failures += 1
            self.last_failure = f"{t.short(event_type)}: {type(exc).__name__}: {exc}"[:200]


def _status(board: Board, sender: BrokerSender, elapsed: float) -> str:
    notes = []
    if sender.failures:
        notes.append(
            f"{sender.failures} event(s) not accepted by the broker ({sender.last_failure})"
        )
    if elapsed > NO_DEPLOYMENT_WARNING_SECONDS and not board.deployed:
        notes.append(
            "no flow reported started by deploy yet: check the log for deploy / worker errors "
            "(runs wait as deferred until their flow is deployed)"
        )
    if board.policy_note:
        notes.append(board.policy_note)
    return " | ".join(notes) or "Ctrl-C stops everything; summary and PNG go to .run/demo/"


def run(session: RunSession, stop: threading.Event, *, out_dir: Path | None = None) -> None:
    """The live demo against a running `make run` (called in a thread by shared.local.run)."""
    from rich.console import Console
    from rich.live import Live

    policy_file = session.env.get("ORCHESTRATOR_POLICY_FILE")
    policy = load_policy(policy_file)
    redis = store.connect(session.redis_url)
    started = time.time()
    board = Board(redis, policy, started)
    board.start_from_now()
    if not policy_file or Path(policy_file).resolve() != DEMO_POLICY.resolve():
        board.policy_note = (
            f"the functions run with {policy_file or 'the built-in policy'}, not the demo's: "
            "effects may take longer to show"
        )
    sender = BrokerSender(session)
    scenario.seed(sender.send)
    console = Console()
    second = 0
    with Live(board.table(0), console=console, refresh_per_second=2, transient=False) as live:
        while not stop.is_set():
            scenario.act(sender.send, second)
            try:
                board.poll()
                board.sample(time.time())
            except Exception as exc:  # Redis gone (shutting down): stop showing
                log.warning("demo: cannot read the state: %s", exc)
                break
            elapsed = time.time() - started
            live.update(board.table(elapsed, _status(board, sender, elapsed)))
            second += 1
            stop.wait(max(0.0, started + second - time.time()))
    elapsed = time.time() - started
    extra: dict[str, Any] = {"mode": "live", "brokerFailures": sender.failures}
    if board.policy_note:
        board.notes.append(board.policy_note)
    summary = board.summary(elapsed, extra=extra)
    paths = write_outputs(board, summary, out_dir or Path(session.state_dir) / "demo")
    console.print(summary_text(summary), soft_wrap=True, highlight=False, markup=False)
    console.print(
        f"demo: summary in {paths['text']} and {paths['json']}, chart in {paths['png']}",
        soft_wrap=True,
        highlight=False,
    )
