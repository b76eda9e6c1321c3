"""Where the operator commands find Redis and the policy: the environment, completed by a
running `make run` session (its `.run/session.json`) when the environment names no Redis."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from redis import Redis

from shared import store
from shared.model.policy import Policy, load_policy


def environment(state_dir: str | None) -> dict[str, str]:
    """The process environment; a running session fills in what it lacks (yours wins)."""
    env = dict(os.environ)
    if "REDIS_URL" not in env:
        from shared.local.session import DEFAULT_STATE_DIR, RunSession

        session = RunSession.load(Path(state_dir or DEFAULT_STATE_DIR))
        if session is not None:
            env = {**session.env, **env}
    return env


def connect(env: Mapping[str, str]) -> tuple[Redis, Policy]:
    url = env.get("REDIS_URL")
    if not url:
        raise SystemExit("REDIS_URL: required (or a running `orchestrator run` in --state-dir)")
    return store.connect(url), load_policy(env.get("ORCHESTRATOR_POLICY_FILE") or None)
