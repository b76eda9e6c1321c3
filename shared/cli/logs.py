"""`orchestrator logs [-f] [PART]`: the log of each part of `make run` (.run/logs/<part>.log).

`make run` writes every part's output there (the live demo table owns the terminal); this reads
it back: the last lines of one part or of all of them, and with `-f` what follows, as it comes.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from shared.local.session import DEFAULT_STATE_DIR, LOG_DIR

DEFAULT_LINES = 40
FOLLOW_POLL_SECONDS = 0.2


def log_files(state_dir: Path, part: str | None) -> list[Path]:
    folder = state_dir / LOG_DIR
    if part is not None:
        path = folder / f"{part}.log"
        if not path.is_file():
            known = ", ".join(p.stem for p in sorted(folder.glob("*.log"))) or "none yet"
            raise SystemExit(f"no log for {part!r} in {folder} (parts: {known})")
        return [path]
    found = sorted(folder.glob("*.log"))
    if not found:
        raise SystemExit(f"no logs in {folder}: is `make run` (orchestrator run) running here?")
    return found


def last_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines, reading at most what they need from the end of the file."""
    with path.open("rb") as handle:
        handle.seek(0, 2)
        end = handle.tell()
        size = min(end, 4096)
        while True:
            handle.seek(end - size)
            chunk = handle.read(size)
            if chunk.count(b"\n") > count or size == end:
                break
            size = min(end, size * 2)
    lines = chunk.decode("utf-8", errors="replace").splitlines()
    return lines[-count:] if count else []


def ends(paths: list[Path]) -> dict[Path, int]:
    return {path: path.stat().st_size for path in paths}


def follow(
    offsets: dict[Path, int],
    out: IO[str],
    *,
    prefix: bool,
    keep_going: Callable[[], bool] = lambda: True,
) -> None:
    """Prints what is appended to each file after its offset until `keep_going()` is false
    (Ctrl-C ends it)."""
    paths = list(offsets)
    while keep_going():
        for path in paths:
            for line in _new_lines(path, offsets):
                out.write(f"{path.stem:>13} │ {line}\n" if prefix else line + "\n")
        out.flush()
        time.sleep(FOLLOW_POLL_SECONDS)


def _new_lines(path: Path, offsets: dict[Path, int]) -> Iterator[str]:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size < offsets[path]:  # a new `make run` started the file again
        offsets[path] = 0
    with path.open("rb") as handle:
        handle.seek(offsets[path])
        data = handle.read(size - offsets[path])
    complete, _, _ = data.rpartition(b"\n")
    if not complete and not data.endswith(b"\n"):
        return  # only a partial line so far: wait for its end
    offsets[path] += len(complete) + 1
    yield from complete.decode("utf-8", errors="replace").splitlines()


def show(state_dir: Path, part: str | None, lines: int, out: IO[str]) -> dict[Path, int]:
    """Prints the last lines of each part; returns where each file ended, to follow from."""
    paths = log_files(state_dir, part)
    offsets = ends(paths)
    for path in paths:
        for line in last_lines(path, lines):
            out.write(f"{path.stem:>13} │ {line}\n" if part is None else line + "\n")
    out.flush()
    return offsets


def cmd_logs(args: argparse.Namespace) -> int:
    import sys

    offsets = show(Path(args.state_dir), args.part, args.lines, sys.stdout)
    if args.follow:
        with contextlib.suppress(KeyboardInterrupt):
            follow(offsets, sys.stdout, prefix=args.part is None)
    return 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="show (and with -f follow) the log of each part of a running `make run`",
    )
    parser.add_argument("part", nargs="?", help="flow-start, deploy, step-execute, broker, ...")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    parser.add_argument("-n", "--lines", type=int, default=DEFAULT_LINES, help="lines to show")
    parser.add_argument(
        "--state-dir", default=str(DEFAULT_STATE_DIR), help="where `make run` keeps its session"
    )
    parser.set_defaults(func=cmd_logs)
