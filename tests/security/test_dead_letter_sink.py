"""Attack: anyone who can reach the dead-letter sink makes it store and parse anything.

The sink is the image's fifth target (functions/dead_letters/main.py), run here as its pod
runs it: functions-framework (gunicorn) on a free port, over real HTTP, against the suite's
Redis; the OIDC case against the fake IAM's JWKS standing in for the cluster's issuer."""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import Iterator

import pytest
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from redis import Redis

from shared.clock import FakeClock
from shared.events import types as t
from shared.local.embedded_redis import EmbeddedRedis
from shared.runtime.dead_letters import RedisDeadLetters
from tests.fakes.iam import FakeIam
from tests.support.system import FunctionProcess

ONE_MIB = 1024 * 1024
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXh4eA"
AUDIENCE = "dead-letters.orchestrator.svc.cluster.local"
BROKER = "system:serviceaccount:orchestrator:oidc-trigger-flow-start"
CE_HEADERS = (
    "ce-specversion: 1.0\r\nce-type: org.openintegrationhub.flow.started\r\n"
    "ce-source: /attacker\r\nce-id: big-1\r\ncontent-type: application/json\r\n"
)


def _env(redis_server: EmbeddedRedis, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATOR_", "IAM_"))}
    return {**env, "REDIS_URL": redis_server.url, **extra}  # no key, no IAM: it needs neither


@pytest.fixture(scope="module")
def sink_process(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FunctionProcess]:
    logs = tmp_path_factory.mktemp("dead-letters")
    process = FunctionProcess("dead-letters", _env(redis_server), logs).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def sink(sink_process: FunctionProcess, redis: Redis) -> FunctionProcess:
    return sink_process  # `redis` first: flushed for each test


def letter(**extensions: str) -> CloudEvent:
    return CloudEvent(
        {
            "type": t.FLOW_STARTED,
            "source": "/component-orchestrator/deploy",
            "id": "e-1",
            "datacontenttype": "application/json",
            "authtoken": TOKEN,
            "knativeerrorcode": "503",
            "knativeerrordest": "http://flow-start.orchestrator.svc.cluster.local",
            "knativeerrordata": base64.b64encode(b"echoed").decode(),
            **extensions,
        },
        {"id": "f1", "password": "hunter2"},
    )


def post(sink: FunctionProcess, event: CloudEvent, **headers: str) -> requests.Response:
    wire_headers, body = to_binary(event)
    return requests.post(sink.url, headers={**wire_headers, **headers}, data=body, timeout=30)


def _answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _raw(sink: FunctionProcess, request: bytes, rest: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", sink.port), timeout=30) as sock:
        sock.sendall(request)
        try:
            if rest:
                sock.sendall(rest)
        except OSError:
            pass  # answered and closed while we were still sending
        return _answer(sock)


def test_a_dead_letter_is_stored_without_its_tokens(sink: FunctionProcess, redis: Redis) -> None:
    response = post(sink, letter())
    assert response.status_code == 200, response.text
    [stored] = RedisDeadLetters(redis).read()
    assert stored.status == 503 and stored.subscriber.startswith("http://flow-start")
    assert stored.stripped == ["authtoken"] and stored.data["password"] == "[REDACTED]"
    assert TOKEN not in str(redis.xrange("co:broker:dead-letters"))
    assert requests.get(sink.url + "healthz", timeout=10).status_code == 200
    assert "orchestrator_dead_letters_total" in requests.get(sink.url + "metrics", timeout=10).text


def test_a_60_mb_body_is_answered_413_before_the_rest_is_sent(
    sink: FunctionProcess, redis: Redis
) -> None:
    """64 KiB of an announced 60 MB: a server that reads the body first waits for the rest."""
    head = f"POST / HTTP/1.1\r\nHost: x\r\n{CE_HEADERS}Content-Length: 60000000\r\n\r\n"
    answer = _raw(sink, head.encode() + b"x" * 65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert RedisDeadLetters(redis).read() == []


def test_a_chunked_body_past_the_limit_is_answered_413(sink: FunctionProcess, redis: Redis) -> None:
    head = f"POST / HTTP/1.1\r\nHost: x\r\n{CE_HEADERS}Transfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    answer = _raw(sink, head.encode(), chunk * (2 * ONE_MIB // 65536))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert RedisDeadLetters(redis).read() == []


def test_a_bad_content_length_or_envelope_is_400_and_the_sink_keeps_serving(
    sink: FunctionProcess, redis: Redis
) -> None:
    answer = _raw(
        sink, f"POST / HTTP/1.1\r\nHost: x\r\n{CE_HEADERS}Content-Length: abc\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    malformed = requests.post(sink.url, data=b"{}", timeout=30, headers={"ce-id": "x"})
    assert malformed.status_code == 400 and "type: required" in malformed.text
    deep = requests.post(
        sink.url,
        data=b"[" * 80 + b"]" * 80,
        timeout=30,
        headers={
            "ce-id": "x",
            "ce-source": "/a",
            "ce-type": t.FLOW_STARTED,
            "ce-specversion": "1.0",
            "content-type": "application/json",
        },
    )
    assert deep.status_code == 400 and "nested deeper" in deep.text
    assert RedisDeadLetters(redis).read() == []
    assert post(sink, letter()).status_code == 200  # still serving


# ---- Knative's OIDC: only the Broker's service accounts, for our audience -----------------
@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIam]:
    """The cluster's OIDC issuer stands in as the fake IAM's key pair and JWKS."""
    fake = FakeIam(FakeClock()).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def oidc_process(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory, issuer: FakeIam
) -> Iterator[FunctionProcess]:
    iam = issuer
    env = _env(
        redis_server,
        DEAD_LETTERS_OIDC_AUDIENCE=AUDIENCE,
        DEAD_LETTERS_OIDC_ISSUER=iam.issuer,
        DEAD_LETTERS_OIDC_JWKS_URL=iam.env()["IAM_JWKS_URL"],
        DEAD_LETTERS_OIDC_SUBJECTS="system:serviceaccount:orchestrator:oidc-trigger-,"
        "system:serviceaccount:orchestrator:oidc-broker-",
    )
    process = FunctionProcess("dead-letters", env, tmp_path_factory.mktemp("oidc")).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def oidc_sink(oidc_process: FunctionProcess, redis: Redis) -> FunctionProcess:
    return oidc_process


def _service_account_token(iam: FakeIam, subject: str, audience: str = AUDIENCE) -> str:
    now = int(time.time())  # the sink's clock is the real one
    return iam.token(
        tenant=None, sub=subject, permissions=(), aud=audience, iat=now, nbf=now, exp=now + 600
    )


@pytest.mark.parametrize(
    ("who", "status"),
    [
        pytest.param("none", 401, id="no token"),
        pytest.param("audience", 401, id="a Broker token for another audience"),
        pytest.param("flow-pod", 403, id="a flow pod's token for our audience"),
        pytest.param("broker", 200, id="the Broker's token"),
    ],
)
def test_with_oidc_only_the_brokers_token_for_our_audience_is_accepted(
    oidc_sink: FunctionProcess, issuer: FakeIam, redis: Redis, who: str, status: int
) -> None:
    iam = issuer
    headers: dict[str, str] = {}
    if who == "audience":
        headers["Authorization"] = "Bearer " + _service_account_token(iam, BROKER, "flow-start")
    elif who == "flow-pod":
        token = _service_account_token(iam, "system:serviceaccount:flows:default")
        headers["Authorization"] = "Bearer " + token
    elif who == "broker":
        headers["Authorization"] = "Bearer " + _service_account_token(iam, BROKER)
    response = post(oidc_sink, letter(), **headers)
    assert response.status_code == status, response.text
    assert len(RedisDeadLetters(redis).read()) == (1 if status == 200 else 0)
