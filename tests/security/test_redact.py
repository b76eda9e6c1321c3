"""Secrets hygiene: no token or secret reaches a log line, event, error body or audit entry."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.clock import FakeClock
from shared.security import redact as r
from shared.security.tokens import sign_internal
from tests.conftest import TEST_KEY

JWT = sign_internal(
    TEST_KEY, "deploy", FakeClock(), event_type="org.openintegrationhub.flow.started"
)
OPAQUE = "s3cr3t-opaque-value-42"


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """A real handler on a real logger, with redaction installed the way processes install it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s %(extra_field)s"))
    logger = logging.getLogger("redact-test")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    r.install_redaction([TEST_KEY, "x"])
    try:
        yield stream
    finally:
        r.uninstall_redaction()
        logger.removeHandler(handler)


def log(
    message: str, *args: object, extra_field: object = "-", exc: BaseException | None = None
) -> None:
    logger = logging.getLogger("redact-test")
    if exc is None:
        logger.info(message, *args, extra={"extra_field": extra_field})
    else:
        try:
            raise exc
        except BaseException:
            logger.exception(message, *args, extra={"extra_field": extra_field})


@pytest.mark.parametrize(
    ("message", "args"),
    [
        ("token in an argument: %s", (JWT,)),
        ("event %r", ({"type": "flow.execute", "authtoken": OPAQUE},)),
        ("headers %s", ({"Authorization": f"Bearer {OPAQUE}"},)),
        ("url http://iam/api/v1/tokens?token=%s&x=1", (OPAQUE,)),
        ("env ORCHESTRATOR_KEY=%s", (TEST_KEY,)),
        ("json body %s", ('{"steptoken": "' + OPAQUE + '", "ok": 1}',)),
        ("Authorization: Bearer %s", (OPAQUE,)),
        ("the orchestrator key itself, anywhere: <%s>", (TEST_KEY,)),
        ("flow_token=%s done", (OPAQUE,)),
        ("FLOW_TOKEN='%s'", (OPAQUE,)),
        ("password=%s", (OPAQUE,)),
        ("client_secret: '%s'", (OPAQUE,)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_log_messages_are_redacted(
    logs: io.StringIO, message: str, args: tuple[object, ...]
) -> None:
    log(message, *args)
    line = logs.getvalue()
    assert OPAQUE not in line and JWT not in line and TEST_KEY not in line
    assert r.MASK in line


def test_extras_are_redacted_by_name_and_pattern(logs: io.StringIO) -> None:
    log("with extra", extra_field={"token": OPAQUE, "nested": [{"note": f"bearer {OPAQUE}"}, JWT]})
    line = logs.getvalue()
    assert OPAQUE not in line and JWT not in line


def test_exceptions_and_tracebacks_are_redacted(logs: io.StringIO) -> None:
    log("boom", exc=RuntimeError(f"failed with token={OPAQUE} and {JWT}"))
    text = logs.getvalue()
    assert "RuntimeError" in text and "Traceback" in text
    assert OPAQUE not in text and JWT not in text


def test_records_of_any_logger_are_redacted_through_the_root(
    logs: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        logging.getLogger("some.library").info("sent %s", JWT)
    assert JWT not in caplog.text and r.MASK in caplog.text


def test_ordinary_text_is_left_alone(logs: io.StringIO) -> None:
    message = "flow f1 run r1 fencingToken=7 token_id=abc key: missing 100% done"
    log(message)
    assert message in logs.getvalue()


def test_redact_masks_secret_fields_but_keeps_protocol_fields() -> None:
    event = {
        "type": "flow.execution.admitted",
        "authtoken": OPAQUE,
        "data": {
            "runId": "r1",
            "fencingToken": 3,
            "tokenId": "t1",
            "credentials_id": "c1",
            "fields": {"apiKey": OPAQUE, "password": OPAQUE, "url": "https://x"},
            "env": [{"name": "FLOW_TOKEN", "FLOW_TOKEN": OPAQUE}],
        },
        "note": f"got {JWT}",
    }
    clean = r.redact(event)
    assert OPAQUE not in repr(clean) and JWT not in repr(clean)
    assert clean["data"]["fencingToken"] == 3 and clean["data"]["tokenId"] == "t1"
    assert clean["data"]["credentials_id"] == "c1" and clean["data"]["fields"]["url"] == "https://x"
    assert event["authtoken"] == OPAQUE  # the input is not changed


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("authtoken", True),
        ("steptoken", True),
        ("token", True),
        ("password", True),
        ("secret", True),
        ("key", True),
        ("FLOW_TOKEN", True),
        ("authorization", True),
        ("IAM_SERVICE_TOKEN", True),
        ("ORCHESTRATOR_KEY", True),
        ("apiKey", True),
        ("client_secret", True),
        ("Authorization", True),
        ("fencingToken", False),
        ("fencing_token", False),
        ("tokenId", False),
        ("keys", False),
        ("monkey", False),
        ("runId", False),
        ("tenant", False),
        ("credentials_id", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert r.is_secret_name(name) is secret


token_chars = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
    min_size=8,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(
    header=token_chars,
    payload=token_chars,
    signature=st.one_of(st.just(""), token_chars),
    before=st.text(max_size=30),
    after=st.text(max_size=30),
)
def test_no_jwt_survives_in_any_text(
    header: str, payload: str, signature: str, before: str, after: str
) -> None:
    token = f"eyJ{header}.{payload}.{signature}"
    assert token not in r.redact_text(f"{before} {token} {after}")


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(
        ["authtoken", "steptoken", "token", "password", "secret", "FLOW_TOKEN", "api_key"]
    ),
    value=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789+/=~.", min_size=6, max_size=40),
    style=st.sampled_from(["{n}={v}", "{n}='{v}'", '"{n}": "{v}"', "{n} = {v}", "?{n}={v}&a=b"]),
)
def test_no_named_secret_survives_in_any_text(name: str, value: str, style: str) -> None:
    text = "before " + style.format(n=name, v=value) + " after"
    out = r.redact_text(text)
    assert value not in out.replace(name, "")


def test_secret_environment_values_are_masked_anywhere() -> None:
    value = "env-held-service-token-value-123"
    r.install_redaction(environ={"IAM_SERVICE_TOKEN": value, "KUBERNETES_NAMESPACE": "flows"})
    try:
        assert r.redact_text(f"calling with {value}!") == f"calling with {r.MASK}!"
        assert r.redact_text("namespace flows") == "namespace flows"
    finally:
        r.uninstall_redaction()
