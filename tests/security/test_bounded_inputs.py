"""Attacks with big or deep inputs (docs/security.md, "Bounded inputs"), against the real
function apps: over a real socket where "before reading the rest" is the point, else through
the functions-framework app as Knative runs it, with a real Redis behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient
from redis import Redis

from shared.clock import FakeClock
from shared.events import FlowDocument
from shared.local.embedded_redis import free_port
from shared.model import flows
from shared.security.redact import MASK, redact_text
from tests.support.apps import ROOT, function_client
from tests.support.flows import flow_doc

ONE_MIB = 1024 * 1024
CE_HEADERS = (
    "ce-specversion: 1.0\r\nce-type: org.openintegrationhub.flow.execute\r\n"
    "ce-source: /attacker\r\nce-id: big-1\r\ncontent-type: application/json\r\n"
)


@pytest.fixture()
def flow_start(monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str]) -> FlaskClient:
    return function_client(monkeypatch, base_env, "flow-start", K_SINK="http://127.0.0.1:9/")


@pytest.fixture()
def server(base_env: dict[str, str], tmp_path: Path) -> Iterator[int]:
    """flow-start as its container runs it: `functions-framework` (gunicorn) on a free port."""
    port = free_port()
    env = {**os.environ, **base_env, "K_SINK": "http://127.0.0.1:9/", "PYTHONPATH": str(ROOT)}
    env.pop("ORCHESTRATOR_POLICY_FILE", None)
    binary = Path(sys.executable).parent / "functions-framework"
    process = subprocess.Popen(
        [str(binary), "--target", "handle", "--source", str(ROOT / "functions/flow_start/main.py"),
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=ROOT, stdout=(tmp_path / "out").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(300):
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if process.poll() is not None:
                raise AssertionError((tmp_path / "out").read_text()[-2000:])
            time.sleep(0.1)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_60_mb_body_is_answered_413_before_the_rest_is_sent(server: int) -> None:
    """Only 64 KiB of the announced 60 MB are sent, and the answer must come anyway: a server
    that reads the body first would wait for the rest (this socket then times out)."""
    with socket.create_connection(("127.0.0.1", server), timeout=30) as sock:
        head = f"POST / HTTP/1.1\r\nHost: x\r\n{CE_HEADERS}Content-Length: 60000000\r\n\r\n"
        sock.sendall(head.encode() + b"x" * 65536)
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_chunked_body_past_the_limit_is_answered_413(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=30) as sock:
        head = f"POST / HTTP/1.1\r\nHost: x\r\n{CE_HEADERS}Transfer-Encoding: chunked\r\n\r\n"
        sock.sendall(head.encode())
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        try:
            for _ in range(2 * ONE_MIB // 65536):
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed while we were still sending
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def _nested(levels: int) -> str:
    """`levels` times {"x": [...]} around a string, as JSON text (2 levels each)."""
    return '{"x": [' * levels + '"bottom"' + "]}" * levels


@pytest.mark.parametrize("levels", [40, 5000])  # 80 and 10,000 JSON levels
def test_deeply_nested_json_is_400_before_any_state_change(
    flow_start: FlaskClient, redis: Redis, levels: int
) -> None:
    flows.upsert(redis, FlowDocument.parse(flow_doc("f1", cron=None)), FakeClock().now())
    before = sorted(redis.keys("*"))
    body = '{"flowId": "f1", "msg": ' + _nested(levels) + "}"
    headers = {
        "ce-specversion": "1.0", "ce-type": "org.openintegrationhub.flow.execute",
        "ce-source": "/attacker", "ce-id": f"deep-{levels}", "content-type": "application/json",
    }  # fmt: skip
    response = flow_start.post("/", headers=headers, data=body)
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert "deeper than 64" in response.get_json()["message"]
    assert sorted(redis.keys("*")) == before


def test_a_shallow_body_with_brackets_in_strings_is_not_refused(flow_start: FlaskClient) -> None:
    body = json.dumps({"flowId": "nope", "msg": {"text": "[" * 10_000 + "{" * 10_000}})
    headers = {
        "ce-specversion": "1.0", "ce-type": "org.openintegrationhub.flow.execute",
        "ce-source": "/tests", "ce-id": "shallow-1", "content-type": "application/json",
    }  # fmt: skip
    response = flow_start.post("/", headers=headers, data=body)
    assert response.status_code == 422  # it got to the handler: an unknown flow


def test_a_25000_letter_cron_is_echoed_cut_to_80_characters(flow_start: FlaskClient) -> None:
    """The unauthenticated flow.starting of the attack: its 400 quoted all 25,000 letters (and
    every log line and error body ran them through redaction)."""
    document = flow_doc("f-cron", cron="a" * 25_000)
    headers = {
        "ce-specversion": "1.0", "ce-type": "org.openintegrationhub.flow.starting",
        "ce-source": "/attacker", "ce-id": "cron-1", "content-type": "application/json",
    }  # fmt: skip
    response = flow_start.post("/", headers=headers, data=json.dumps(document))
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert "cron" in text
    longest = max(len(run) for run in text.replace('"', " ").replace("'", " ").split())
    assert longest <= 80 + 3, longest  # the cut value and its "..."
    assert len(text) < 2000


@pytest.mark.parametrize(
    "text",
    [
        "a" * 200_000,
        "token=" * 40_000,
        "a='" * 70_000,
        '"a": "' * 40_000,
        "eyJaaaa-" * 25_000,
        "a." * 100_000,
    ],
    ids=["one word", "name= runs", "unclosed quotes", "json pairs", "jwt-like", "dotted"],
)
def test_redaction_of_texts_that_were_quadratic_finishes(text: str) -> None:
    """Quadratic patterns took 33 s on 40,000 letters, so these 200,000-character texts would
    take many minutes (the suite's timeout); time per KB is in benchmarks/redaction.py."""
    out = redact_text(text)
    assert out and len(out) <= len(text) + 100


def test_redaction_still_masks_after_the_patterns_were_bounded() -> None:
    text = 'x token=abc12345 "password": "hunter22" Bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0'
    out = redact_text(text)
    assert "abc12345" not in out and "hunter22" not in out and "eyJzdWIi" not in out
    assert out.count(MASK) == 3


def test_made_up_event_types_are_counted_under_one_label(flow_start: FlaskClient) -> None:
    """Anyone may send any ce-type: one series per made-up type grew /metrics without bound."""
    for n in range(30):
        headers = {
            "ce-specversion": "1.0", "ce-type": f"evil.type.{n}-{'x' * 50}",
            "ce-source": "/attacker", "ce-id": f"t-{n}", "content-type": "application/json",
        }  # fmt: skip
        assert flow_start.post("/", headers=headers, data="{}").status_code == 400
    metrics = flow_start.get("/metrics").get_data(as_text=True)
    assert "evil.type" not in metrics
    assert 'type="unknown"' in metrics


@pytest.mark.parametrize(
    ("nodes", "edges", "field"), [(101, 0, "nodes"), (2, 1001, "edges")], ids=["nodes", "edges"]
)
def test_a_flow_over_100_nodes_or_1000_edges_is_400_and_nothing_is_stored(
    flow_start: FlaskClient, redis: Redis, nodes: int, edges: int, field: str
) -> None:
    """A 10,000-node flow made 20,000 objects (a Deployment and a Secret per node)."""
    document = flow_doc("f-big", cron=None)
    document["graph"] = {
        "nodes": [{"id": f"n{i}", "componentId": "c1", "function": "run"} for i in range(nodes)],
        "edges": [{"source": "n0", "target": "n1"} for _ in range(edges)],
    }
    headers = {
        "ce-specversion": "1.0", "ce-type": "org.openintegrationhub.flow.starting",
        "ce-source": "/tests", "ce-id": f"big-{field}", "content-type": "application/json",
    }  # fmt: skip
    response = flow_start.post("/", headers=headers, data=json.dumps(document))
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert any(
        p.startswith(f"graph.{field}") or field in p for p in response.get_json()["problems"]
    )
    assert flows.get(redis, "f-big") is None
