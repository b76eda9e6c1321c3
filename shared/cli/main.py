"""The `orchestrator` command: run, broker, send, invoke, dead-letters (+ plug-in commands).

Other modules add commands without touching this file: a module `shared/cli/<name>.py` that
defines `add_parser(subparsers)` is imported and called; the parser it adds must set
`func=<callable(args) -> int>` with `set_defaults`.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import os
import pkgutil
import re
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from redis.exceptions import RedisError

import shared.cli as cli_package
from shared.clock import SystemClock
from shared.errors import OrchestratorError
from shared.events import OutgoingEvent
from shared.events.envelope import EXT_AUTH_TOKEN, EXT_STEP_TOKEN, PAYLOADS
from shared.events.types import (
    COMPONENT_CONTROL_TYPES,
    FUNCTIONS,
    PREFIX,
    STEP_RESULT_TYPES,
    TICK,
    short,
)
from shared.local.run import DEFAULT_STATE_DIR, RunOptions, RunSession, knative_dir
from shared.security.tokens import sign_internal

CLI_SENDER = "orchestrator-cli"
ADMIN_ROLE = "ADMIN"


# --------------------------------------------------------------------------- helpers
def event_type(name: str) -> str:
    """`flow.starting` or the full type → the full type; refuses unknown types."""
    full = name if name.startswith(PREFIX) else PREFIX + name
    if full not in PAYLOADS:
        known = ", ".join(sorted(short(t) for t in PAYLOADS))
        raise argparse.ArgumentTypeError(f"unknown event type {name!r}; known: {known}")
    return full


def read_json(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"{path}: not JSON: {exc}") from exc


# CloudEvents: attribute names are lower-case ASCII letters and digits, at most 20 of them.
EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
# Tokens never go on the command line (ps and shell history show argv): the environment or stdin.
TOKEN_VARIABLES = {"authtoken": "ORCHESTRATOR_AUTHTOKEN", "steptoken": "ORCHESTRATOR_STEPTOKEN"}


def _extensions(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--extension wants NAME=VALUE, got {pair!r}")
        if not EXTENSION_NAME.fullmatch(name):
            raise SystemExit(
                f"--extension {name[:40]!r}: a CloudEvents attribute name is 1-20 lower-case "
                "letters and digits (no '_', '-' or capitals)"
            )
        out[name] = value
    return out


def given_tokens(
    args: argparse.Namespace, environ: Mapping[str, str], stdin: IO[str]
) -> dict[str, str]:
    """authtoken / steptoken from ORCHESTRATOR_AUTHTOKEN / ORCHESTRATOR_STEPTOKEN, or from one
    line of stdin when the option is `-`; a token written on the command line is refused."""
    tokens: dict[str, str] = {}
    for name, variable in TOKEN_VARIABLES.items():
        option = getattr(args, name, None)
        if option is not None and option != "-":
            raise SystemExit(
                f"--{name}: give '-' to read the token from stdin, or set {variable}; a token on "
                "the command line is visible to every user (ps, shell history)"
            )
        if option == "-":
            if getattr(args, "file", None) == "-":
                raise SystemExit(f"--{name} - and FILE - cannot both read stdin")
            value = stdin.readline().strip()
            if not value:
                raise SystemExit(f"--{name} -: no token on stdin")
            tokens[name] = value
        elif environ.get(variable):
            tokens[name] = environ[variable]
    return tokens


def build_event(args: argparse.Namespace, full_type: str, data: Any) -> CloudEvent:
    attributes: dict[str, Any] = {
        "type": full_type,
        "source": args.source,
        "datacontenttype": "application/json",
    }
    if args.id:
        attributes["id"] = args.id
    for name, value in (("tenant", args.tenant), ("flowid", args.flow_id), ("runid", args.run_id)):
        if value:
            attributes[name] = value
    attributes.update(_extensions(args.extension))
    tokens = getattr(args, "tokens", {})
    if tokens.get("authtoken"):
        attributes[EXT_AUTH_TOKEN] = tokens["authtoken"]
    if tokens.get("steptoken"):
        attributes[EXT_STEP_TOKEN] = tokens["steptoken"]
    return CloudEvent(attributes, data)


def _is_control(full_type: str) -> bool:
    from shared.events.types import CONTROL_TYPES

    return full_type in CONTROL_TYPES


def _is_internal(full_type: str) -> bool:
    """Events our own functions send each other (signed with ORCHESTRATOR_KEY)."""
    return not (_is_control(full_type) or full_type in STEP_RESULT_TYPES or full_type == TICK)


def add_token(event: CloudEvent, data: Any, session: RunSession | None, tenant: str | None) -> str:
    """Signs the event the way its real sender would, when no token was given; says how."""
    full_type = str(event["type"])
    if full_type == TICK or event.get(EXT_AUTH_TOKEN) or full_type in STEP_RESULT_TYPES:
        return ""
    if _is_control(full_type):
        if session is None or not session.iam_url or not session.iam_service_token:
            return "no authtoken (no embedded IAM session): the event is refused if auth is on"
        from shared.local.embedded_iam import print_token

        claimed = tenant or (data.get("tenant") if isinstance(data, dict) else None)
        permission = (
            "components.control" if full_type in COMPONENT_CONTROL_TYPES else "flows.control"
        )
        token = print_token(
            str(claimed or "admin"),
            sub="orchestrator-cli",
            permissions=(permission,),
            admin=claimed is None,
            iam_url=session.iam_url,
            service_token=session.iam_service_token,
            out=io.StringIO(),
        )
        event[EXT_AUTH_TOKEN] = token
        who = f"tenant {claimed}" if claimed else "an admin (permission all)"
        return f"authtoken: issued by the embedded IAM for {who} (not shown)"
    key = os.environ.get("ORCHESTRATOR_KEY") or (session.orchestrator_key if session else None)
    if not key:
        return "no authtoken (no ORCHESTRATOR_KEY): the event is refused"
    event[EXT_AUTH_TOKEN] = sign_internal(
        key, CLI_SENDER, SystemClock(), event_type=str(event["type"])
    )
    return "authtoken: signed with this session's ORCHESTRATOR_KEY (not shown)"


def _note(text: str) -> None:
    if text:
        print(text, file=sys.stderr)


# --------------------------------------------------------------------------- commands
def cmd_run(args: argparse.Namespace) -> int:
    from shared.local.demo import runner as demo
    from shared.local.run import run

    return run(
        RunOptions(
            state_dir=Path(args.state_dir),
            host=args.host,
            broker_port=args.broker_port,
            auth=args.auth,
            demo=args.demo,
            demo_run=demo.run,
            demo_policy=demo.DEMO_POLICY,
            tick_interval=args.tick_interval,
            log_ticks=args.log_ticks,
            logs_inline=args.logs,
        )
    )


def cmd_broker(args: argparse.Namespace) -> int:
    from shared.local.broker import Broker, load_topology, serve
    from shared.runtime.dead_letters import FileDeadLetters

    subscribers: dict[str, str] = {}
    for pair in args.subscriber:
        name, sep, url = pair.partition("=")
        if not sep:
            raise SystemExit(f"--subscriber wants NAME=URL, got {pair!r}")
        subscribers[name] = url
    overrides: dict[str, Any] = {}
    for option, key in (
        ("retry", "retry"),
        ("backoff_delay", "backoff_delay"),
        ("retry_after_max", "retry_after_max"),
        ("timeout", "timeout"),
    ):
        if getattr(args, option) is not None:
            overrides[key] = getattr(args, option)
    broker = Broker(
        load_topology(Path(args.knative), *(Path(extra) for extra in args.also_knative)),
        subscribers,
        FileDeadLetters(Path(args.dead_letters)),
        overrides=overrides,
        quiet_types=() if args.log_ticks else (TICK,),
    )
    server = serve(broker, host=args.host, port=args.port)
    policy = broker.policy
    print(
        f"broker {broker.name!r} on {server.url}: {len(broker.routes)} triggers, retry "
        f"{policy.retry} times, {policy.backoff_policy} from {policy.backoff_delay:g}s, "
        f"dead letters → {args.dead_letters}",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        broker.close(wait=False)
    # Deliveries still in flight (or waiting to retry) end with the process, as they would when
    # a broker pod stops; exit now instead of letting the pool's threads wait for their answers.
    sys.stdout.flush()
    os._exit(0)


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """The Knative Broker's dead-letter sink: the image's fifth target under functions-framework
    (functions/dead_letters/main.py), as its pod runs it."""
    from shared.local.run import function_source

    if not os.environ.get("REDIS_URL"):
        raise SystemExit("REDIS_URL: required")
    argv = [
        sys.executable, "-m", "functions_framework", "--target", "handle",
        "--source", str(function_source("dead-letters")),
        "--host", args.host, "--port", str(args.port),
    ]  # fmt: skip
    os.execv(sys.executable, argv)
    return 0  # not reached


def cmd_send(args: argparse.Namespace) -> int:
    session = RunSession.load(Path(args.state_dir))
    broker = args.broker or os.environ.get("ORCHESTRATOR_BROKER_URL")
    broker = broker or (session.broker_url if session else "http://127.0.0.1:8080")
    data = read_json(args.file)
    event = build_event(args, args.type, data)
    _note(add_token(event, data, session, args.tenant))
    headers, body = to_binary(event)
    try:
        response = requests.post(broker, headers=headers, data=body, timeout=args.timeout)
    except requests.RequestException as exc:
        print(f"broker {broker} unreachable: {type(exc).__name__}", file=sys.stderr)
        return 1
    print(f"sent {short(args.type)} id={event['id']} → {broker}: {response.status_code}")
    if response.status_code >= 300:
        print(response.text, file=sys.stderr)
        return 1
    return 0


class PrintingSender:
    """`invoke` without K_SINK: the events the function emits are printed, not sent."""

    def __init__(self) -> None:
        self.events: list[OutgoingEvent] = []

    def send(self, event: OutgoingEvent) -> None:
        self.events.append(event)


def invoke_event(args: argparse.Namespace, raw: Any) -> tuple[CloudEvent, Any]:
    """A structured CloudEvent file as it is, or a data file plus --type."""
    if isinstance(raw, dict) and "specversion" in raw:
        from shared.runtime.cloudevent_server import parse_request

        body = json.dumps(raw).encode()
        try:
            event = parse_request({"content-type": "application/cloudevents+json"}, body)
        except ValueError as exc:
            raise SystemExit(f"{args.file}: {exc}") from exc
        for name, value in getattr(args, "tokens", {}).items():
            event[name] = value
        return event, raw.get("data")
    if args.type is None:
        raise SystemExit(f"{args.file} is not a CloudEvent (no specversion): give --type TYPE")
    return build_event(args, args.type, raw), raw


def cmd_invoke(args: argparse.Namespace) -> int:
    from shared.runtime.function import FunctionRuntime
    from shared.runtime.logs import configure_logging

    configure_logging("invoke")
    session = RunSession.load(Path(args.state_dir))
    env = dict(os.environ)
    if "REDIS_URL" not in env and session is not None:
        env.update(session.env)  # the running `make run`: its Redis, key, IAM and broker
    module = importlib.import_module(f"shared.handlers.{args.function.replace('-', '_')}")
    printing = None if env.get("K_SINK") else PrintingSender()
    event, _ = invoke_event(args, read_json(args.file))
    try:
        runtime = FunctionRuntime.from_env(module.SPEC, env, sender=printing)
        key = runtime.settings.orchestrator_key
        if not event.get(EXT_AUTH_TOKEN) and _is_internal(str(event["type"])):
            event[EXT_AUTH_TOKEN] = sign_internal(
                key, CLI_SENDER, runtime.clock, event_type=str(event["type"])
            )
        outcome = runtime.handle(event)
    except OrchestratorError as error:
        print(json.dumps({"ok": False, "status": error.status, **error.to_body()}, indent=2))
        return 1
    result: dict[str, Any] = {
        "ok": True,
        "function": args.function,
        "type": outcome.event_type,
        "duplicate": outcome.duplicate,
        "flushed": outcome.flushed,
    }
    if printing is not None:
        result["emitted"] = [json.loads(e.to_json()) for e in printing.events]
    print(json.dumps(result, indent=2))
    return 0


# --------------------------------------------------------------------------- parser
def _event_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", help="event id (default: a random one)")
    parser.add_argument("--source", default="/orchestrator-cli", help="event source")
    parser.add_argument("--tenant", help="extension `tenant` (and the tenant of a minted token)")
    parser.add_argument("--flow-id", help="extension `flowid`")
    parser.add_argument("--run-id", help="extension `runid`")
    parser.add_argument(
        "--authtoken",
        metavar="-",
        help="read extension `authtoken` from stdin (or set ORCHESTRATOR_AUTHTOKEN); "
        "else one is made for you",
    )
    parser.add_argument(
        "--steptoken",
        metavar="-",
        help="read extension `steptoken` from stdin (or set ORCHESTRATOR_STEPTOKEN)",
    )
    parser.add_argument(
        "--extension", action="append", default=[], metavar="NAME=VALUE", help="any extension"
    )
    parser.add_argument(
        "--state-dir", default=str(DEFAULT_STATE_DIR), help="where `make run` keeps its session"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator", description="component-orchestrator: run, route and invoke locally"
    )
    parser.add_argument("--version", action="version", version=f"orchestrator {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="the whole system locally (make run)")
    run.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR))
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--broker-port", type=int, default=8080, help="0: any free port")
    run.add_argument(
        "--auth",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="embedded IAM with ORCHESTRATOR_AUTH=required (--no-auth: off)",
    )
    run.add_argument(
        "--demo",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("DEMO", "1") != "0",
        help="run the demo (DEMO=0 turns it off)",
    )
    run.add_argument("--tick-interval", type=float, default=1.0, help="seconds between ticks")
    run.add_argument("--log-ticks", action="store_true", help="log every tick delivery")
    run.add_argument(
        "--logs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show every part's log inline (default: only without the demo; always in "
        "<state-dir>/logs/<part>.log, `orchestrator logs -f`)",
    )
    run.set_defaults(func=cmd_run)

    broker = sub.add_parser("broker", help="the local broker alone")
    broker.add_argument("--host", default="127.0.0.1")
    broker.add_argument("--port", type=int, default=8080)
    broker.add_argument("--knative", default=str(knative_dir()), help="dir with Broker/Triggers")
    broker.add_argument(
        "--also-knative",
        action="append",
        default=[],
        metavar="DIR",
        help="more Triggers (knative/oih for the event-bus bridge)",
    )
    broker.add_argument(
        "--subscriber",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="where the Knative Service NAME listens locally (repeat per function)",
    )
    broker.add_argument(
        "--dead-letters", default=str(DEFAULT_STATE_DIR / "dead-letters.jsonl"), metavar="FILE"
    )
    broker.add_argument("--retry", type=int, help="override the Broker's delivery.retry")
    broker.add_argument("--backoff-delay", type=float, help="override backoffDelay (seconds)")
    broker.add_argument("--retry-after-max", type=float, help="cap on Retry-After (seconds)")
    broker.add_argument("--timeout", type=float, help="per-attempt timeout (seconds)")
    broker.add_argument("--log-ticks", action="store_true", help="log every tick delivery")
    broker.set_defaults(func=cmd_broker)

    sink = sub.add_parser("dead-letters", help="the Knative dead-letter sink (REDIS_URL)")
    sink.add_argument("--host", default="0.0.0.0")
    sink.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    sink.set_defaults(func=cmd_dead_letters)

    send = sub.add_parser("send", help="post an event to the broker (binary mode)")
    send.add_argument("type", type=event_type, help="event type, e.g. flow.starting")
    send.add_argument("file", help="the event's data as JSON ('-': stdin)")
    send.add_argument("--broker", help="broker URL (default: the running make run's)")
    send.add_argument("--timeout", type=float, default=10.0)
    _event_options(send)
    send.set_defaults(func=cmd_send)

    invoke = sub.add_parser("invoke", help="run one function in-process on one event")
    invoke.add_argument("function", choices=FUNCTIONS)
    invoke.add_argument("file", help="a structured CloudEvent, or data with --type ('-': stdin)")
    invoke.add_argument("--type", type=event_type, help="event type when FILE is only data")
    _event_options(invoke)
    invoke.set_defaults(func=cmd_invoke)

    for module in plugin_modules():
        module.add_parser(sub)
    describe_every_command(parser)
    return parser


def plugin_modules() -> list[Any]:
    """Every `shared/cli/<name>.py` (but this one) that defines `add_parser(subparsers)`."""
    found = []
    for info in sorted(pkgutil.iter_modules(cli_package.__path__), key=lambda i: i.name):
        if info.name == "main":
            continue
        try:
            module = importlib.import_module(f"shared.cli.{info.name}")
        except Exception as exc:  # one broken plug-in must not take the whole CLI down
            print(f"orchestrator: skipping shared.cli.{info.name}: {exc}", file=sys.stderr)
            continue
        if callable(getattr(module, "add_parser", None)):
            found.append(module)
    return found


def describe_every_command(parser: argparse.ArgumentParser) -> None:
    """A subcommand's `--help` starts with its one-line help when it has no description."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                if not child.description:
                    child.description = helps.get(name)
                describe_every_command(child)


def version() -> str:
    try:
        return metadata.version("component-orchestrator")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _json_error(message: str, code: int) -> int:
    print(json.dumps({"ok": False, "error": message}))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "authtoken") or hasattr(args, "steptoken"):
        args.tokens = given_tokens(args, os.environ, sys.stdin)
    if args.command != "invoke":  # invoke logs like a function (shared.runtime.logs, redacted)
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "json", False):
        return int(args.func(args) or 0)
    # --json: whatever goes wrong is still one JSON document on stdout, and a non-zero exit
    try:
        return int(args.func(args) or 0)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            return _json_error(exc.code, 2)
        raise
    except (OrchestratorError, RedisError, OSError) as exc:
        return _json_error(f"{type(exc).__name__}: {exc}", 1)


if __name__ == "__main__":
    sys.exit(main())
