"""A function's real functions-framework app (functions/<fn>/main.py) on the test's settings."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import cast

import pytest
from flask.testing import FlaskClient
from functions_framework import create_app

ROOT = Path(__file__).resolve().parent.parent.parent


def function_client(
    monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str], function: str, **extra: str
) -> FlaskClient:
    """The app as Knative starts it: settings from the environment (checked at start), no
    policy file unless the test sets one; `extra` adds variables (e.g. K_SINK)."""
    for name, value in {**env, **extra}.items():
        monkeypatch.setenv(name, value)
    if "ORCHESTRATOR_POLICY_FILE" not in {**env, **extra}:
        monkeypatch.delenv("ORCHESTRATOR_POLICY_FILE", raising=False)
    source = ROOT / "functions" / function.replace("-", "_") / "main.py"
    return app_client(source)


def app_client(source: Path) -> FlaskClient:
    """functions-framework's app for `functions/<fn>/main.py` (its `create_app` is untyped)."""
    return cast(FlaskClient, create_app(target="handle", source=str(source)).test_client())
