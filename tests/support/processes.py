"""Processes the tests start and watch (local workers, ferrymen, their parents)."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether the process runs: a zombie (ended, not yet reaped) still answers kill(0), so its
    state in /proc decides; a reaped one is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:  # `pid (comm) state ...`; comm may hold spaces
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
