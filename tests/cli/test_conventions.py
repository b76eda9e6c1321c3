"""The CLI's conventions: --version, a description on every command, JSON errors under --json,
tokens never on the command line, CloudEvents extension names, and `orchestrator logs`."""

from __future__ import annotations

import argparse
import io
import json
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from shared.cli import logs as cli_logs
from shared.cli import main as cli


def every_parser(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield f"{path} {name}".strip(), child
                yield from every_parser(child, f"{path} {name}")


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert (
        capsys.readouterr().out.strip()
        == f"orchestrator {metadata.version('component-orchestrator')}"
    )


def test_every_command_and_subcommand_has_a_description() -> None:
    commands = dict(every_parser(cli.build_parser()))
    assert {"run", "send", "invoke", "logs", "flows", "tenants", "events tail"} <= set(commands)
    missing = sorted(name for name, parser in commands.items() if not parser.description)
    assert missing == []


@pytest.mark.parametrize(
    "argv",
    [
        ["flows", "--json"],
        ["runs", "--json"],
        ["tenants", "--json"],
        ["events", "tail", "--json"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_under_json_an_error_is_one_json_document(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    code = cli.main([*argv, "--state-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code != 0
    document = json.loads(out)
    assert document["ok"] is False and "REDIS_URL" in document["error"]


@pytest.mark.parametrize("option", ["--authtoken", "--steptoken"])
def test_a_token_written_on_the_command_line_is_refused(
    option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.json"
    data.write_text("{}")
    argv = [
        "send",
        "flow.stopping",
        str(data),
        option,
        "eyJhbGciOi.secret",
        "--broker",
        "http://127.0.0.1:9",
    ]
    with pytest.raises(SystemExit, match=r"ORCHESTRATOR_(AUTH|STEP)TOKEN") as refused:
        cli.main([*argv, "--state-dir", str(tmp_path)])
    assert "eyJhbGciOi" not in str(refused.value)


def test_a_token_and_the_data_cannot_both_come_from_stdin(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="cannot both read stdin"):
        cli.main(["send", "flow.stopping", "-", "--authtoken", "-", "--state-dir", str(tmp_path)])


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("flowid", True),
        ("abc123", True),
        ("a" * 20, True),
        ("a" * 21, False),
        ("flow_id", False),
        ("Tenant-Name", False),
        ("Tenant", False),
        ("", False),
    ],
)
def test_extension_names_follow_the_cloudevents_rule(name: str, accepted: bool) -> None:
    if accepted:
        assert cli._extensions([f"{name}=v"]) == {name: "v"}
    else:
        with pytest.raises(SystemExit):
            cli._extensions([f"{name}=v"])


# --------------------------------------------------------------------------- orchestrator logs
@pytest.fixture()
def state(tmp_path: Path) -> Path:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "broker.log").write_text("".join(f"broker line {i}\n" for i in range(100)))
    (logs / "deploy.log").write_text("deploy started\n")
    return tmp_path


def test_logs_shows_the_last_lines_of_every_part_with_its_name(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["logs", "--state-dir", str(state), "-n", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("│")[0].strip() for line in lines] == ["broker"] * 3 + ["deploy"]
    assert lines[2].endswith("broker line 99") and lines[3].endswith("deploy started")


def test_logs_of_one_part_are_bare_lines(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["logs", "broker", "--state-dir", str(state), "-n", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == ["broker line 98", "broker line 99"]


def test_an_unknown_part_names_the_known_ones(state: Path) -> None:
    with pytest.raises(SystemExit, match="broker, deploy"):
        cli.main(["logs", "nope", "--state-dir", str(state)])


def test_follow_prints_what_is_appended_whole_lines_only(state: Path) -> None:
    path = state / "logs" / "deploy.log"
    out = io.StringIO()
    done = threading.Event()
    follower = threading.Thread(
        target=cli_logs.follow,
        args=(cli_logs.ends([path]), out),
        kwargs={"prefix": False, "keep_going": lambda: not done.is_set()},
    )
    follower.start()
    try:
        with path.open("a") as log:
            log.write("first new\nsecond ")
            log.flush()
            deadline = time.monotonic() + 10
            while "first new" not in out.getvalue() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "second" not in out.getvalue()  # half a line waits for its end
            log.write("half\n")
            log.flush()
            while "second half" not in out.getvalue() and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        done.set()
        follower.join()
    assert out.getvalue().splitlines() == ["first new", "second half"]
