"""`orchestrator run` (`make run`): the whole system on one machine (docs/architecture.md §9).

Starts, in this order: Redis (embedded, data under .run/redis, unless REDIS_URL is set), the
embedded IAM (a thread of this process), the four functions (functions-framework, one process
each), the local broker (a process) and the local clock (a thread, a tick per second). All
processes get one freshly generated ORCHESTRATOR_KEY. Prints where each listens, then a live
log; Ctrl-C (or SIGTERM) stops everything and leaves no process behind.

The session file (.run/session.json, mode 0600, removed on exit) tells `orchestrator send` and
`orchestrator invoke` where the broker and Redis are, and holds this session's generated key and
IAM service token so they can sign events for you. It is local-only and never logged.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests

from shared.events.types import FUNCTIONS
from shared.local.clock import LocalClock
from shared.local.embedded_iam import EmbeddedIam, print_token
from shared.local.embedded_redis import EmbeddedRedis, free_port
from shared.local.session import DEFAULT_STATE_DIR, LOG_DIR, SESSION_FILE, RunSession
from shared.local.supervisor import Console, Supervisor, install_stop_signals
from shared.settings import Settings

__all__ = [
    "DEFAULT_STATE_DIR",
    "DemoHook",
    "LocalRun",
    "RunOptions",
    "RunSession",
    "knative_dir",
    "run",
]

# The demo is handed in by the caller (the CLI), never imported from here: a runner of the
# local system must not depend on what runs on it.
DemoHook = Callable[[RunSession, threading.Event], None]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_SECONDS = 30.0
BACKCHANNEL = "backchannel"  # `orchestrator backchannel`, with QUEUE_BACKEND=amqp
BRIDGE = "event-bus-bridge"  # the Knative Service name its Triggers name (knative/oih)
BRIDGE_TOKEN_SECONDS = 24 * 3600


def function_source(function: str) -> Path:
    """functions/<fn>/main.py, from the source tree or the installed package."""
    package = function.replace("-", "_")
    return Path(str(resources.files("functions").joinpath(package, "main.py")))


def knative_dir() -> Path:
    return PROJECT_ROOT / "knative" / "base"


# --------------------------------------------------------------------------- run
@dataclass
class RunOptions:
    state_dir: Path = DEFAULT_STATE_DIR
    host: str = "127.0.0.1"
    broker_port: int = 8080
    auth: bool = True
    demo: bool = True
    demo_run: DemoHook | None = None
    demo_policy: Path | None = None  # the policy the functions get while the demo runs
    # Each part's output goes to <state_dir>/logs/<part>.log; inline also prints it. None: inline
    # only without the demo, whose live table owns the terminal.
    logs_inline: bool | None = None
    tick_interval: float = 1.0
    log_ticks: bool = False
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


class LocalRun:
    def __init__(self, options: RunOptions, console: Console | None = None) -> None:
        self.options = options
        self.console = console or Console()
        self.state_dir = options.state_dir.resolve()
        self.log_dir = self.state_dir / LOG_DIR
        inline = options.logs_inline
        if inline is None:
            inline = not (options.demo and options.demo_run is not None)
        self.supervisor = Supervisor(
            self.console, cwd=str(PROJECT_ROOT), log_dir=self.log_dir, inline=inline
        )
        self.stop_requested = threading.Event()
        self.redis: EmbeddedRedis | None = None
        self.iam: Any = None
        self.clock: LocalClock | None = None
        self.demo_thread: threading.Thread | None = None
        self.session: RunSession | None = None
        self._cleaned = False

    def say(self, text: str) -> None:
        self.console.line(text)

    # --- start ---------------------------------------------------------------------------------
    def start(self) -> RunSession:
        started = time.monotonic()
        host = self.options.host
        env = self._base_env()
        self._demo_policy(env)
        redis_note = self._start_redis(env)
        auth_note = self._start_iam(env)
        broker_port = self._broker_port()
        broker_url = f"http://{host}:{broker_port}"
        env["K_SINK"] = broker_url
        Settings.from_env(env)  # refuse bad settings here, naming the variable, before any spawn

        functions: dict[str, str] = {}
        for function in FUNCTIONS:
            port = free_port()
            url = f"http://{host}:{port}"
            argv = [
                sys.executable, "-m", "functions_framework",
                "--target", "handle",
                "--source", str(function_source(function)),
                "--host", host, "--port", str(port),
            ]  # fmt: skip
            self.supervisor.spawn(function, argv, env, url)
            functions[function] = url
        broker_argv = [
            sys.executable, "-m", "shared.cli.main", "broker",
            "--host", host, "--port", str(broker_port),
            "--knative", str(knative_dir()),
            "--dead-letters", str(self.state_dir / "dead-letters.jsonl"),
        ]  # fmt: skip
        for function, url in functions.items():
            broker_argv += ["--subscriber", f"{function}={url}"]
        bridge_url = self._start_bridge(env, broker_url) if env.get("OIH_EVENT_BUS") else None
        if bridge_url:
            broker_argv += ["--also-knative", str(PROJECT_ROOT / "knative" / "oih")]
            broker_argv += ["--subscriber", f"{BRIDGE}={bridge_url}"]
        if env.get("QUEUE_BACKEND") == "amqp":  # ferryman's replies come back (docs/oih.md)
            argv = [sys.executable, "-m", "shared.cli.main", "backchannel", "--broker", broker_url]
            self.supervisor.spawn(BACKCHANNEL, argv, env)
        if self.options.log_ticks:
            broker_argv.append("--log-ticks")
        self.supervisor.spawn("broker", broker_argv, env, broker_url)
        self._wait_until_listening()

        self.session = RunSession(
            state_dir=str(self.state_dir),
            broker_url=broker_url,
            redis_url=env["REDIS_URL"],
            functions=functions,
            env={k: env[k] for k in _SETTING_NAMES if k in env},
            iam_url=getattr(self.iam, "url", None),
        )
        self.session.save(self.state_dir / SESSION_FILE)
        self.clock = LocalClock(broker_url + "/", interval=self.options.tick_interval).start()
        self._print_summary(redis_note, auth_note, time.monotonic() - started)
        self._start_demo()
        return self.session

    def _start_bridge(self, env: dict[str, str], broker_url: str) -> str:
        """With OIH_EVENT_BUS, the hub's RabbitMQ bus comes in and goes out (docs/oih.md)."""
        port = free_port()
        url = f"http://{self.options.host}:{port}"
        argv = [
            sys.executable, "-m", "shared.cli.main", "bridge",
            "--broker", broker_url, "--host", self.options.host, "--port", str(port),
        ]  # fmt: skip
        bridge_env = dict(env)
        if self.iam is not None:
            # the hub's service account: an admin token of the embedded IAM, for the bridge only
            bridge_env["OIH_BRIDGE_TOKEN"] = print_token(
                "hub",
                sub="oih-hub",
                permissions=("flows.control", "components.control"),
                admin=True,
                expires_in=BRIDGE_TOKEN_SECONDS,
                iam_url=self.iam.url,
                service_token=env["IAM_SERVICE_TOKEN"],
                out=io.StringIO(),
            )
        self.supervisor.spawn(BRIDGE, argv, bridge_env, url)
        return url

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in self.options.environ.items() if k not in _OURS}
        env.update(
            {
                "ORCHESTRATOR_KEY": secrets.token_urlsafe(48),
                "ORCHESTRATOR_DEPLOY_DRIVER": "local",
                "PYTHONUNBUFFERED": "1",
                "WORKERS": "1",  # one gunicorn worker per function: state lives in Redis
            }
        )
        # The local clock ticks every second: a tick handler must not work through the minute
        # the way it does between the PingSource's once-a-minute ticks.
        for name in ("FLOW_START_WORK_THROUGH_SECONDS", "STEP_TICK_WORK_SECONDS"):
            env.setdefault(name, "0")
        # Locally, every-second crons are for trying things out (overlap, skips) in seconds.
        env.setdefault("CRON_MIN_INTERVAL_SECONDS", "1")
        for name in (
            "REDIS_URL",
            "ORCHESTRATOR_POLICY_FILE",
            "COMPONENT_REPOSITORY_URL",
            "OIH_EVENT_BUS",
        ):
            if self.options.environ.get(name):
                env[name] = self.options.environ[name]
        return env

    def _demo_policy(self, env: dict[str, str]) -> None:
        """With the demo, the functions run with its policy (`RunOptions.demo_policy`), so its
        effects show within minutes; a policy file you set yourself wins."""
        if not self.options.demo or env.get("ORCHESTRATOR_POLICY_FILE"):
            return
        policy = self.options.demo_policy
        if policy is not None and Path(policy).is_file():
            env["ORCHESTRATOR_POLICY_FILE"] = str(policy)

    def _start_redis(self, env: dict[str, str]) -> str:
        if env.get("REDIS_URL"):
            return "external (REDIS_URL)"
        data_dir = self.state_dir / "redis"
        if self.options.demo:
            # The demo is a scenario that starts from nothing: runs, leases and penalties left
            # by an earlier session (perhaps killed) would hold its slots. Its state is its own.
            data_dir = self.state_dir / "demo-redis"
            shutil.rmtree(data_dir, ignore_errors=True)
        self.redis = EmbeddedRedis(data_dir).start()
        env["REDIS_URL"] = self.redis.url
        fresh = " (fresh for the demo)" if self.options.demo else ""
        return f"embedded, data in {data_dir}{fresh} (pid {self.redis.process.pid})"  # type: ignore[union-attr]

    def _start_iam(self, env: dict[str, str]) -> str:
        if not self.options.auth:
            env["ORCHESTRATOR_AUTH"] = "off"
            return "ORCHESTRATOR_AUTH=off: IAM checks of control events are skipped"
        self.iam = EmbeddedIam(host=self.options.host).start()
        env.update(self.iam.env())
        env["ORCHESTRATOR_AUTH"] = "required"
        return "ORCHESTRATOR_AUTH=required against the embedded IAM"

    def _broker_port(self) -> int:
        wanted = self.options.broker_port
        if wanted and _port_free(self.options.host, wanted):
            return wanted
        port = free_port()
        if wanted:
            self.say(f"port {wanted} is taken: the broker listens on {port} instead")
        return port

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        waiting = {c.name: c for c in self.supervisor.children}
        while waiting:
            if self.stop_requested.is_set():
                raise StartError("interrupted during start-up", ())
            dead = self.supervisor.exited()
            if dead is not None:
                raise StartError(f"{dead.name} stopped during start-up", dead.tail)
            for name, child in list(waiting.items()):
                if not child.url or _listening(child.url):  # no url: nothing to listen on
                    del waiting[name]
            if time.monotonic() > deadline:
                raise StartError(
                    f"not listening after {READY_TIMEOUT_SECONDS:.0f}s: {', '.join(waiting)}", ()
                )
            time.sleep(0.1)

    def _print_summary(self, redis_note: str, auth_note: str, seconds: float) -> None:
        assert self.session is not None
        rows = [("redis", _redact_url(self.session.redis_url), redis_note)]
        if self.iam is not None:
            rows.append(("iam", self.iam.url, "embedded (JWKS, tokens, introspection)"))
        for child in self.supervisor.children:
            rows.append((child.name, child.url or "", f"pid {child.pid}"))
        rows.append(
            ("clock", f"every {self.options.tick_interval:g}s", "orchestrator.tick → broker")
        )
        self.say("")
        self.say(f"component-orchestrator is up ({seconds:.1f}s)")
        for name, where, note in rows:
            self.say(f"  {name:<13} {where:<34} {note}")
        self.say(f"  auth          {auth_note}")
        policy = self.session.env.get("ORCHESTRATOR_POLICY_FILE") or "built-in defaults"
        self.say(f"  policy        {policy}")
        self.say(f"  dead letters  {self.state_dir / 'dead-letters.jsonl'}")
        shown = "shown below" if self.supervisor.inline else "`orchestrator logs -f [part]`"
        self.say(f"  logs          {self.log_dir}/<part>.log ({shown})")
        self.say("send an event:   orchestrator send flow.starting examples/flow.json")
        self.say("stop:            Ctrl-C")
        self.say(f"ready: broker {self.session.broker_url}")
        self.say("")

    def _start_demo(self) -> None:
        if not self.options.demo:
            return
        run_demo = self.options.demo_run
        if run_demo is None:
            self.say("demo: none was given; running without")
            return
        self.demo_thread = threading.Thread(
            target=run_demo, args=(self.session, self.stop_requested), name="demo", daemon=True
        )
        self.demo_thread.start()

    # --- run and stop --------------------------------------------------------------------------
    def wait(self) -> int:
        """Until Ctrl-C / SIGTERM (0), or until a process dies on its own (1)."""
        while not self.stop_requested.wait(0.5):
            dead = self.supervisor.exited()
            if dead is not None:
                self.say(
                    f"{dead.name} stopped (exit {dead.process.returncode}): stopping everything"
                )
                return 1
        return 0

    def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        self.stop_requested.set()
        self.say("stopping ...")
        if self.clock is not None:
            self.clock.stop()
        if self.demo_thread is not None:
            self.demo_thread.join(timeout=10)
        self.supervisor.stop_all()
        if self.iam is not None:
            self.iam.stop()
        if self.redis is not None:
            self.redis.stop()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / SESSION_FILE).unlink()
        self.say("stopped: no process left behind")


class StartError(RuntimeError):
    def __init__(self, message: str, tail: Any) -> None:
        super().__init__(message)
        self.tail = list(tail)


def run(options: RunOptions) -> int:
    local = LocalRun(options)
    atexit.register(local.cleanup)
    install_stop_signals(local.stop_requested.set)
    try:
        local.start()
        return local.wait()
    except StartError as exc:
        local.say(f"start-up failed: {exc}")
        for line in exc.tail:
            local.say(f"    {line}")
        return 1
    except Exception as exc:  # a settings error names the variable: show it plainly
        local.say(f"start-up failed: {exc}")
        return 1
    finally:
        local.cleanup()


_SETTING_NAMES = (
    "REDIS_URL",
    "K_SINK",
    "ORCHESTRATOR_KEY",
    "ORCHESTRATOR_AUTH",
    "ORCHESTRATOR_DEPLOY_DRIVER",
    "ORCHESTRATOR_POLICY_FILE",
    "COMPONENT_REPOSITORY_URL",
    "IAM_JWKS_URL",
    "IAM_ISSUER",
    "IAM_AUDIENCE",
    "IAM_URL",
    "IAM_SERVICE_TOKEN",
)
# Settings `make run` decides itself: an outer value must not leak in by accident.
_OURS = frozenset(_SETTING_NAMES) | {
    "IAM_INTROSPECT_URL",
    "PORT",
    "FUNCTION_TARGET",
    "FUNCTION_SOURCE",
}


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _listening(url: str) -> bool:
    try:
        requests.get(url.rstrip("/") + "/healthz", timeout=1)
    except requests.RequestException:
        return False
    return True


def _redact_url(url: str) -> str:
    parsed = urlparse(url)
    return url.replace(parsed.password, "***") if parsed.password else url
