"""`orchestrator token`: prints a token from the (embedded) IAM, nothing else on stdout."""

from __future__ import annotations

import pytest
from jose import jwt

from shared.cli.main import main
from shared.local.embedded_iam import EmbeddedIam


def test_token_command_prints_only_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with EmbeddedIam() as iam:
        monkeypatch.setenv("IAM_URL", iam.url)
        monkeypatch.setenv("IAM_SERVICE_TOKEN", iam.service_token)
        assert main(["token", "--tenant", "acme", "--sub", "u1", "--admin"]) == 0
        token = capsys.readouterr().out.strip()
        claims = jwt.get_unverified_claims(token)
        assert (claims["tenant"], claims["sub"]) == ("acme", "u1") and "all" in claims[
            "permissions"
        ]
        assert iam.introspect(token) is not None


def test_token_command_without_an_iam_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    monkeypatch.delenv("IAM_URL", raising=False)
    monkeypatch.delenv("IAM_SERVICE_TOKEN", raising=False)
    assert main(["token", "--tenant", "acme", "--state-dir", str(tmp_path)]) == 2
    assert "make run" in capsys.readouterr().err
