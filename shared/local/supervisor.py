"""Child processes for `make run`: started in their own process group, their output written to
one log file per part (`.run/logs/<part>.log`) and, when asked, printed live with a prefix; all
of them stopped (group by group) on Ctrl-C, SIGTERM or exit.

Each child is started through `python -m shared.local.supervisor -- ARGV`, which asks the kernel to
send it SIGTERM when the supervisor dies (PR_SET_PDEATHSIG) and then execs ARGV; so even a
`kill -9` of `make run` leaves nothing behind. (Setting that in the child with preexec_fn would
not be safe next to the output threads.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1
STOP_TIMEOUT_SECONDS = 5.0


class Console:
    """One lock for every line printed, so lines of different children never interleave."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self._out = out
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            print(text, file=self._out or sys.stdout, flush=True)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    url: str | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    log: IO[str] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None


class Supervisor:
    """`log_dir`: each child's output goes to `<log_dir>/<name>.log`; `inline`: also to the
    console, prefixed with the child's name (the live demo table wants the screen alone)."""

    def __init__(
        self,
        console: Console,
        *,
        cwd: str | None = None,
        log_dir: Path | None = None,
        inline: bool = True,
    ) -> None:
        self.console = console
        self.cwd = cwd
        self.log_dir = log_dir
        self.inline = inline
        self.children: list[Child] = []
        self._lock = threading.Lock()

    def log_path(self, name: str) -> Path | None:
        return self.log_dir / f"{name}.log" if self.log_dir is not None else None

    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], url: str | None = None
    ) -> Child:
        """Starts `argv` in a new session (its own process group); call from the main thread."""
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.local.supervisor", "--", *argv],
            env=dict(env),
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child = Child(name, process, url)
        path = self.log_path(name)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            child.log = path.open("w", buffering=1, encoding="utf-8")  # line-buffered
        with self._lock:
            self.children.append(child)
        threading.Thread(target=self._pump, args=(child,), name=f"out-{name}", daemon=True).start()
        return child

    def _pump(self, child: Child) -> None:
        assert child.process.stdout is not None
        for raw in iter(child.process.stdout.readline, b""):
            text = raw.decode("utf-8", errors="replace").rstrip()
            if not text:
                continue
            child.tail.append(text)
            if child.log is not None:
                child.log.write(text + "\n")
            if self.inline:
                self.console.line(f"{child.name:>13} │ {text}")
        if child.log is not None:
            child.log.close()

    def exited(self) -> Child | None:
        """A child that has stopped on its own, if any."""
        with self._lock:
            return next((c for c in self.children if not c.alive()), None)

    def stop_all(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGINT to every child's process group (last started first), then SIGKILL.

        SIGINT, not SIGTERM: gunicorn treats TERM as a graceful stop that waits for idle
        keep-alive connections; INT is its quick shutdown. Nothing is lost by not waiting:
        every request is idempotent and the broker retries what was cut off."""
        with self._lock:
            children = list(reversed(self.children))
        # Descendants that started a session of their own (the local deploy driver's step
        # workers) are outside every group we signal: note them now, while they are ours.
        strays = descendants([c.pid for c in children])
        for child in children:
            _signal_group(child.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        for child in children:
            remaining = max(0.1, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(remaining)
            # The group may hold grandchildren (gunicorn workers): make sure they go too.
            _signal_group(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout)
        _stop_strays(strays, timeout)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _proc_stat(pid: int | str) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, start time) of a process from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def descendants(roots: Sequence[int]) -> dict[int, int]:
    """Every live descendant of `roots` (Linux /proc): pid → its start time, so that a pid
    reused later by an unrelated process is never signalled."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(entry)) is not None and stat[0] != "Z":
            children.setdefault(stat[1], []).append((int(entry), stat[3]))
    found: dict[int, int] = {}
    pending = list(roots)
    while pending:
        for pid, started in children.get(pending.pop(), []):
            if pid not in found:
                found[pid] = started
                pending.append(pid)
    return found


def _still_same(pid: int, started: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z" and stat[3] == started


def _stop_strays(strays: Mapping[int, int], timeout: float) -> None:
    """SIGTERM, then SIGKILL, to the noted descendants that outlived their parents."""
    alive = [pid for pid, started in strays.items() if _still_same(pid, started)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in alive if _still_same(pid, strays[pid])]
        if not alive:
            return
        time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def group_members(pgids: Sequence[int]) -> list[int]:
    """Pids of live (non-zombie) processes in any of these process groups (Linux /proc)."""
    wanted = set(pgids)
    found: list[int] = []
    for entry in os.listdir("/proc"):
        stat = _proc_stat(entry) if entry.isdigit() else None
        if stat is not None and stat[2] in wanted and stat[0] != "Z":
            found.append(int(entry))
    return found


def install_stop_signals(stop: Callable[[], None]) -> None:
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP all mean: stop everything cleanly."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop())


def _die_with_parent() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's own cleanup still runs
        pass


def _exec_child(argv: Sequence[str]) -> None:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise SystemExit("usage: python -m shared.local.supervisor -- COMMAND [ARGS...]")
    _die_with_parent()
    if os.getppid() == 1:  # the supervisor died before we could ask: do not start at all
        raise SystemExit(1)
    os.execvp(argv[0], list(argv))


if __name__ == "__main__":
    _exec_child(sys.argv[1:])
