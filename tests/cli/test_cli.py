"""`orchestrator send` and `orchestrator invoke` (in-process), and plug-in commands."""

from __future__ import annotations

import argparse
import io
import json
import pkgutil
import sys
import types as pytypes
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from shared import keys
from shared.cli import main as cli
from shared.clock import SystemClock
from shared.errors import TemporaryError
from shared.events import types as t
from shared.local.session import RunSession
from shared.runtime.function import Context
from shared.security.tokens import verify_internal
from tests.conftest import TEST_KEY
from tests.support.http_sink import HttpSink
from tests.support.runtime import recorded, recording_spec


def _file(tmp_path: Path, data: Any, name: str = "event.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


# --------------------------------------------------------------------------- send
def test_send_posts_binary_mode_and_signs_our_own_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_KEY", TEST_KEY)
    data = {"tenant": "acme", "messages": 2}
    with HttpSink(default=202) as sink:
        code = cli.main(
            ["send", "usage.reported", _file(tmp_path, data), "--broker", sink.url,
             "--id", "u-1", "--tenant", "acme", "--state-dir", str(tmp_path)]
        )  # fmt: skip
        [request] = sink.wait_for(1)
    assert code == 0
    headers = request.headers
    assert headers["ce-type"] == t.USAGE_REPORTED and headers["ce-id"] == "u-1"
    assert headers["ce-tenant"] == "acme"
    assert request.json() == data
    assert (
        verify_internal(
            TEST_KEY,
            headers["ce-authtoken"],
            SystemClock(),
            event_type=t.USAGE_REPORTED,
            accept_untyped=False,
        )
        == cli.CLI_SENDER
    )
    out = capsys.readouterr()
    assert "202" in out.out and headers["ce-authtoken"] not in out.out + out.err


def test_send_passes_a_given_token_and_mints_none_for_control_events_without_iam(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with HttpSink(default=202) as sink:
        stop = ["send", "flow.stopping", _file(tmp_path, {"id": "f"}), "--broker", sink.url]
        stop += ["--state-dir", str(tmp_path)]
        assert cli.main(stop) == 0
        monkeypatch.setenv("ORCHESTRATOR_AUTHTOKEN", "given-token")
        assert cli.main(stop) == 0
        monkeypatch.delenv("ORCHESTRATOR_AUTHTOKEN")
        monkeypatch.setattr("sys.stdin", io.StringIO("piped-token\n"))
        assert cli.main([*stop, "--authtoken", "-"]) == 0
        first, second, third = sink.wait_for(3)
    assert "ce-authtoken" not in first.headers
    assert second.headers["ce-authtoken"] == "given-token"
    assert third.headers["ce-authtoken"] == "piped-token"
    assert "no embedded IAM" in capsys.readouterr().err


def test_send_mints_an_iam_token_from_the_running_session(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared.adapters.iam import IamVerifier
    from shared.local.embedded_iam import EmbeddedIam
    from shared.settings import Settings

    with EmbeddedIam() as iam, HttpSink(default=202) as sink:
        RunSession(
            state_dir=str(tmp_path),
            broker_url=sink.url,
            redis_url="redis://127.0.0.1:1/0",
            functions={},
            env={"ORCHESTRATOR_KEY": TEST_KEY, **iam.env()},
            iam_url=iam.url,
        ).save(tmp_path / "session.json")
        flow = {"id": "f1", "tenant": "acme", "graph": {"nodes": [{"id": "a", "componentId": "c"}]}}
        assert (
            cli.main(["send", "flow.starting", _file(tmp_path, flow), "--state-dir", str(tmp_path)])
            == 0
        )
        [request] = sink.wait_for(1)
        settings = Settings.from_env(
            {"REDIS_URL": "redis://x", "ORCHESTRATOR_KEY": TEST_KEY, **iam.env()}
        )
        identity = IamVerifier.from_settings(settings, SystemClock()).verify(
            request.headers["ce-authtoken"]
        )
    assert identity.tenant == "acme" and "flows.control" in identity.permissions
    err = capsys.readouterr().err
    assert "tenant acme" in err and request.headers["ce-authtoken"] not in err


def test_send_reports_a_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with HttpSink(default=400) as sink:
        code = cli.main(["send", "orchestrator.tick", _file(tmp_path, {}), "--broker", sink.url,
                         "--state-dir", str(tmp_path)])  # fmt: skip
    assert code == 1


def test_send_to_nowhere_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with HttpSink() as sink:
        url = sink.url
    code = cli.main(["send", "orchestrator.tick", _file(tmp_path, {}), "--broker", url,
                     "--state-dir", str(tmp_path)])  # fmt: skip
    assert code == 1 and "unreachable" in capsys.readouterr().err


def test_an_unknown_type_is_refused_by_the_parser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["send", "flow.exploded", _file(tmp_path, {})])
    assert caught.value.code == 2 and "unknown event type" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "full"), [("flow.execute", t.FLOW_EXECUTE), (t.TICK, t.TICK)])
def test_short_and_full_type_names(name: str, full: str) -> None:
    assert cli.event_type(name) == full


# --------------------------------------------------------------------------- invoke
@pytest.fixture()
def invoke_env(
    monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str], redis: Redis, tmp_path: Path
) -> Path:
    for name, value in base_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("K_SINK", raising=False)
    return tmp_path


def _use_spec(monkeypatch: pytest.MonkeyPatch, function: str, handler: Any = None) -> None:
    module = __import__(f"shared.handlers.{function.replace('-', '_')}", fromlist=["SPEC"])
    monkeypatch.setattr(module, "SPEC", recording_spec(function, handler))


def _emit_usage(ctx: Context[Any]) -> None:
    event = ctx.new_event(t.USAGE_REPORTED, {"tenant": "acme"}, tenant="acme")
    ctx.commit(None, [event])


def test_invoke_runs_one_function_in_process_and_prints_the_outcome(
    invoke_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _use_spec(monkeypatch, "step-execute", _emit_usage)
    data = {"flowId": "f", "runId": "r", "tenant": "acme", "fencingToken": 1}
    code = cli.main(["invoke", "step-execute", _file(invoke_env, data), "--type",
                     "flow.execution.completed", "--state-dir", str(invoke_env)])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["type"] == t.RUN_COMPLETED and not result["duplicate"]
    [emitted] = result["emitted"]
    assert emitted["type"] == t.USAGE_REPORTED and emitted["extensions"] == {"tenant": "acme"}


def test_invoke_takes_a_structured_cloudevent_file(
    invoke_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _use_spec(monkeypatch, "deploy")
    event = {"specversion": "1.0", "type": t.TICK, "source": "/me", "id": "tick-9", "data": {}}
    assert (
        cli.main(["invoke", "deploy", _file(invoke_env, event), "--state-dir", str(invoke_env)])
        == 0
    )
    assert recorded(redis, keys.DEPLOY) == [{"type": t.TICK, "id": "tick-9", "source": "/me"}]


@pytest.mark.parametrize(
    ("handler", "data", "status", "named"),
    [
        (None, {"runId": "r"}, 400, "flowId"),
        (lambda ctx: (_ for _ in ()).throw(TemporaryError("later")), None, 503, None),
    ],
    ids=["invalid payload", "temporary error"],
)
def test_invoke_prints_the_error_and_exits_non_zero(
    invoke_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    handler: Any,
    data: Any,
    status: int,
    named: str | None,
) -> None:
    _use_spec(monkeypatch, "flow-start", handler)
    data = data or {"flowId": "f", "runId": "r", "tenant": "acme", "fencingToken": 1}
    code = cli.main(["invoke", "flow-start", _file(invoke_env, data), "--type",
                     "flow.execution.failed", "--state-dir", str(invoke_env)])  # fmt: skip
    assert code == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False and result["status"] == status
    if named:
        assert any(p.startswith(named) for p in result["problems"])


def test_invoke_without_a_type_needs_a_cloudevent(invoke_env: Path) -> None:
    with pytest.raises(SystemExit, match="--type"):
        cli.main(
            ["invoke", "deploy", _file(invoke_env, {"id": "x"}), "--state-dir", str(invoke_env)]
        )


# --------------------------------------------------------------------------- plug-ins
def test_plugin_modules_add_their_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = pytypes.ModuleType("shared.cli.hello")

    def add_parser(subparsers: Any) -> None:
        parser = subparsers.add_parser("hello")
        parser.add_argument("--name", default="world")
        parser.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)

    plugin.add_parser = add_parser  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shared.cli.hello", plugin)
    real = pkgutil.iter_modules

    def with_plugin(path: Any) -> Any:
        yield from real(path)
        yield pytypes.SimpleNamespace(name="hello")

    monkeypatch.setattr(pkgutil, "iter_modules", with_plugin)
    assert cli.main(["hello", "--name", "there"]) == 0
    assert capsys.readouterr().out.strip() == "hello there"


def test_every_command_has_help() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"run", "broker", "send", "invoke", "dead-letters"} <= set(sub.choices)
