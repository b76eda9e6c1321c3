"""`make run` end to end: everything starts, an event sent with `orchestrator send` reaches the
functions that consume it through the broker, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.cli.main import build_parser
from shared.clock import FakeClock
from shared.events.types import TICK
from shared.local.clock import LocalClock
from shared.local.run import LocalRun, RunOptions
from shared.local.supervisor import group_members
from tests.support.http_sink import HttpSink


def processes_with(variable: str, value: str) -> list[int]:
    """Live processes whose environment has variable=value (every process of one `make run`
    inherits its REDIS_URL, whichever session or group it started)."""
    wanted = f"{variable}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if wanted in environ.split(b"\0") and state != "Z":
            found.append(int(entry))
    return found


def environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0  # the bound for `make run` to be up


class Run:
    """`orchestrator run` as a subprocess, its output read line by line."""

    def __init__(self, state_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env.update({"PYTHONUNBUFFERED": "1", "DEMO": "0"})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli.main", "run", "--no-demo", "--broker-port", "0",
             "--state-dir", str(state_dir)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first line (seen so far or arriving within `timeout`) matching `pattern`."""
        regex = re.compile(pattern)
        for line in self.lines:
            if match := regex.search(line):
                return match
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines)
                ) from None
            self.lines.append(line)
            if match := regex.search(line):
                return match

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=30)
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return code


@pytest.fixture()
def make_run(tmp_path: Path) -> Iterator[Run]:
    run = Run(tmp_path / "state")
    yield run
    if run.process.poll() is None:
        run.process.kill()
        run.process.wait()


def send(
    state_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli.main", "send", *args, "--state-dir", str(state_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_make_run_routes_an_event_end_to_end_and_stops_cleanly(
    make_run: Run, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    make_run.wait_for(r"^ready: broker (http://\S+)", START_TIMEOUT)
    redis_url = make_run.wait_for(r"^  redis +(redis://\S+)", 1).group(1)
    text = "\n".join(make_run.lines)
    pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
    assert len(pids) == 6, text  # redis, four functions, broker
    assert "ORCHESTRATOR_AUTH=required" in text
    assert (state / "session.json").stat().st_mode & 0o777 == 0o600
    key = json.loads((state / "session.json").read_text())["env"]["ORCHESTRATOR_KEY"]
    started = processes_with("REDIS_URL", redis_url)  # the four functions and the broker
    assert len(started) >= 5 and {environ_of(pid).get("ORCHESTRATOR_KEY") for pid in started} == {
        key
    }  # one generated key, passed to every process

    sent = send(state, "flow.starting", "examples/flow.json", "--id", "hello-1")
    assert sent.returncode == 0, sent.stderr
    assert "202" in sent.stdout
    assert "eyJ" not in sent.stdout + sent.stderr  # the minted token is never printed
    make_run.wait_for(r"flow\.starting .*id=hello-1 → deploy +200", 20)
    make_run.wait_for(r"flow\.starting .*id=hello-1 → flow-start +200", 20)
    make_run.wait_for(r"flow\.started .* → flow-start +200", 20)  # deployed: workers run
    assert len(processes_with("REDIS_URL", redis_url)) > 6

    stop = tmp_path / "stop.json"
    stop.write_text('{"id": "hello-flow"}')
    forged = send(
        state,
        "flow.stopping",
        str(stop),
        "--id",
        "forged-1",
        env={"ORCHESTRATOR_AUTHTOKEN": "forged"},
    )
    assert forged.returncode == 0
    make_run.wait_for(r"flow\.stopping .*id=forged-1 → deploy +401", 20)
    make_run.wait_for(r"dead-letter flow\.stopping id=forged-1 → deploy", 20)

    assert make_run.stop() == 0
    output = "\n".join(make_run.lines)
    assert "stopped: no process left behind" in output
    assert not any("→ step-execute" in line and "hello-1" in line for line in make_run.lines)
    assert "forged" not in (state / "dead-letters.jsonl").read_text().replace("forged-1", "")
    assert group_members(pids) == []
    assert processes_with("REDIS_URL", redis_url) == []  # step workers included
    assert not (state / "session.json").exists()


# --------------------------------------------------------------------------- the parts, alone
def test_the_local_clock_ticks_in_binary_mode_without_a_token() -> None:
    with HttpSink() as broker:
        clock = LocalClock(broker.url, interval=0.05).start()
        try:
            arrived = broker.wait_for(2)
        finally:
            clock.stop()
    assert len(arrived) >= 2, "the clock sent fewer than two ticks"
    for request in arrived:
        assert request.headers["ce-type"] == TICK
        assert request.headers["ce-id"].startswith("tick-")
        assert "ce-authtoken" not in request.headers  # ticks are harmless by design
        assert request.json() == {}


def test_a_tick_resent_within_its_second_is_a_duplicate() -> None:
    fake = FakeClock(start=1767225600.2)
    with HttpSink() as broker:
        clock = LocalClock(broker.url, clock=fake)
        assert clock.tick_once()
        fake.advance(0.5)
        assert clock.tick_once()
        fake.advance(1)
        assert clock.tick_once()
    ids = [request.headers["ce-id"] for request in broker.requests]
    assert ids == ["tick-1767225600", "tick-1767225600", "tick-1767225601"]


def test_the_clock_counts_only_what_the_broker_accepted() -> None:
    with HttpSink(default=503) as broker:
        clock = LocalClock(broker.url, clock=FakeClock())
        assert not clock.tick_once()
    assert clock.sent == 0
    assert not LocalClock("http://127.0.0.1:1/", clock=FakeClock()).tick_once()  # nobody there


def test_an_outer_redis_url_wins_over_the_embedded_server(
    tmp_path: Path, base_env: dict[str, str]
) -> None:
    outer = base_env["REDIS_URL"]
    run = LocalRun(RunOptions(state_dir=tmp_path, demo=False, environ={"REDIS_URL": outer}))
    env = run._base_env()
    note = run._start_redis(env)
    assert env["REDIS_URL"] == outer and "external" in note
    assert run.redis is None and not (tmp_path / "redis").exists()  # nothing started


@pytest.mark.parametrize(("demo", "expected"), [("0", False), ("1", True), (None, True)])
def test_demo_0_turns_the_demo_off(
    monkeypatch: pytest.MonkeyPatch, demo: str | None, expected: bool
) -> None:
    if demo is None:
        monkeypatch.delenv("DEMO", raising=False)
    else:
        monkeypatch.setenv("DEMO", demo)
    assert build_parser().parse_args(["run"]).demo is expected
    assert build_parser().parse_args(["run", "--no-demo"]).demo is False
