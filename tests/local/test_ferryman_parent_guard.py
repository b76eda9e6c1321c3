"""A ferryman the local driver starts ends when the process that started it is gone (the guard
preloaded into node, shared/data/parent_guard.js), as our own worker does: a deploy killed
with SIGKILL leaves no ferryman consuming behind it. Real node processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from shared.adapters.local_driver import PARENT_GUARD
from shared.ports.driver import PARENT_PID_VARIABLE
from tests.support.processes import alive

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs node")

# a stand-in for the local driver: starts a node process as it starts ferryman, prints its pid,
# then waits to be killed
PARENT = f"""
import os, subprocess, sys, time
child = subprocess.Popen(
    ["node", "--require", {str(PARENT_GUARD)!r}, "-e", "setInterval(() => {{}}, 1000)"],
    env={{**os.environ, {PARENT_PID_VARIABLE!r}: sys.argv[1] or str(os.getpid())}},
    start_new_session=True,
)
print(child.pid, flush=True)
time.sleep(600)
"""


def start(parent_pid: str) -> tuple[subprocess.Popen[str], int]:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, parent_pid], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_a_ferryman_ends_when_the_process_that_started_it_is_killed() -> None:
    parent, child = start("")
    try:
        time.sleep(2.5)  # the guard has looked at least twice: its parent is there
        assert alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert wait_gone(child, 15), "the node process outlived the process that started it"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize(
    "parent_pid",
    [pytest.param("999999999", id="a process that is not there: ends"),
     pytest.param("not-a-pid", id="garbage: ignored, keeps running")],
)  # fmt: skip
def test_the_guard_reads_the_parent_it_is_told(parent_pid: str) -> None:
    parent, child = start(parent_pid)
    try:
        if parent_pid.isdigit():
            assert wait_gone(child, 15)
        else:
            time.sleep(2.5)
            assert alive(child)
    finally:
        parent.kill()
        parent.wait(10)
        if alive(child):
            os.kill(child, signal.SIGKILL)
