"""What a newcomer sees: `orchestrator run` on a terminal shows its start-up lines and then the
demo's live table, nothing scrolling over it; every part's log goes to <state>/logs/<part>.log."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")
PARTS = ("flow-start", "deploy", "step-execute", "policy-check", "broker")
CHILD_LINE = re.compile(rf"^\s*({'|'.join(PARTS)}) │", re.M)


class Terminal:
    """`orchestrator run` on a pseudo-terminal; everything it writes to the screen is kept."""

    def __init__(self, state_dir: Path, *extra: str) -> None:
        self.master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DEMO")}
        env.update({"PYTHONUNBUFFERED": "1", "TERM": "xterm-256color", "COLUMNS": "160"})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli.main", "run", "--broker-port", "0",
             "--state-dir", str(state_dir), *extra],
            cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
            start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        self.raw = b""

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the other side closed: the process ended
                    return
                if not chunk:
                    return
                self.raw += chunk

    def read_until(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.screen) and time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            self.read(0.5)
        assert re.search(pattern, self.screen), f"never saw {pattern!r}:\n{self.screen[-3000:]}"

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", errors="replace"))

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        deadline = time.monotonic() + 40
        while self.process.poll() is None and time.monotonic() < deadline:
            self.read(0.5)
        self.read(0.5)
        os.close(self.master)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout=10)


@pytest.mark.slow
def test_the_live_table_owns_the_terminal_and_logs_go_to_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    terminal = Terminal(state)
    try:
        terminal.read_until(r"ready: broker http://", 40)
        terminal.read_until(r"acme", 30)  # the demo's table, tenant by tenant
        broker_log = state / "logs" / "broker.log"
        deadline = time.monotonic() + 30
        # until the broker has delivered something (its lines go to the file, not the screen)
        while "→" not in (broker_log.read_text() if broker_log.exists() else ""):
            assert time.monotonic() < deadline, "the broker logged no delivery"
            terminal.read(0.5)
        terminal.read(2)
    finally:
        code = terminal.stop()
    screen = terminal.screen
    assert code == 0, screen[-3000:]
    assert "component-orchestrator is up" in screen
    assert f"{state / 'logs'}/<part>.log (`orchestrator logs -f [part]`)" in screen
    assert CHILD_LINE.findall(screen) == []  # no part's log line reached the screen
    assert "stopped: no process left behind" in screen
    for part in PARTS:
        assert (state / "logs" / f"{part}.log").is_file(), part


@pytest.mark.slow
def test_logs_inline_shows_the_parts_on_the_screen_as_before(tmp_path: Path) -> None:
    terminal = Terminal(tmp_path / "state", "--logs", "--no-demo")
    try:
        terminal.read_until(r"ready: broker http://", 40)
        terminal.read_until(r"(?m)^\s*broker │", 30)  # the broker says where it listens
    finally:
        assert terminal.stop() == 0
    assert "logs          " in terminal.screen and "(shown below)" in terminal.screen
