"""Mapping our errors to HTTP for functions-framework (which ignores return values).

Errors become werkzeug HTTP exceptions with a JSON body naming the problem. Bodies never
echo headers or tokens.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from cloudevents.http import CloudEvent
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from shared.errors import OrchestratorError, TemporaryError
from shared.security.redact import redact
from shared.settings import Settings

log = logging.getLogger(__name__)


def json_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(body), status=status, mimetype="application/json", headers=headers or {}
    )


def as_http_exception(error: OrchestratorError) -> HTTPException:
    headers: dict[str, str] = {}
    if isinstance(error, TemporaryError) and error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    exception = HTTPException(description=error.message)
    exception.code = error.status
    # Messages may quote what an outside system said: never let a token out in a body.
    exception.response = json_response(error.status, redact(error.to_body()), headers)
    return exception


def serve(handle: Callable[[CloudEvent], object], event: CloudEvent) -> None:
    """Runs one event; anything but success leaves as an HTTP exception."""
    try:
        handle(event)
    except OrchestratorError as error:
        level = logging.WARNING if error.status < 500 else logging.ERROR
        log.log(level, "%s answered %s: %s", event.get("type"), error.status, error.message)
        raise as_http_exception(error) from None
    except HTTPException:
        raise
    except Exception:
        log.exception("unexpected failure handling %s id=%s", event.get("type"), event.get("id"))
        exception = HTTPException(description="internal error")
        exception.code = 500
        exception.response = json_response(
            500, {"error": "InternalError", "message": "internal error"}
        )
        raise exception from None


REQUIRED_ATTRIBUTES = ("id", "source", "type", "specversion")

# Strings (skipped whole, so brackets inside them do not count; an unclosed one runs to the
# end instead of failing, so the scan stays linear) and brackets.
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]')


def json_too_deep(body: bytes, limit: int) -> bool:
    """True when the JSON text nests arrays/objects deeper than `limit`; linear, and it stops
    at the first bracket past the limit (the parser would recurse once per level)."""
    depth = 0
    for match in _JSON_TOKEN.finditer(body):
        char = match.group()[:1]
        if char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif char in (b"]", b"}"):
            depth -= 1
    return False


def _read_at_most(stream: Any, limit: int) -> bytes:
    """Up to `limit` bytes of a body; a read may return less than asked (chunked input)."""
    parts: list[bytes] = []
    left = limit
    while left > 0:
        chunk = stream.read(min(left, 65536))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("", "application/json", "text/json") or media.endswith("+json")


def _envelope_problem(headers: Any, body: bytes) -> str | None:
    """What is wrong with a request that is not a CloudEvent we can parse, or None."""
    lowered = {str(k).lower(): str(v) for k, v in dict(headers).items()}
    if lowered.get("content-type", "").startswith("application/cloudevents+json"):
        try:
            document = json.loads(body or b"null")
        except ValueError:
            return "body: structured CloudEvent is not valid JSON"
        if not isinstance(document, dict):
            return "body: structured CloudEvent must be a JSON object"
        present = {name for name, value in document.items() if value not in (None, "")}
    else:
        present = {k.removeprefix("ce-") for k, v in lowered.items() if k.startswith("ce-") and v}
    missing = [name for name in REQUIRED_ATTRIBUTES if name not in present]
    if missing:
        return "; ".join(f"{name}: required" for name in missing)
    return None


def install_guards(
    settings: Settings | None = None,
    authenticate: Callable[[str | None], None] | None = None,
    routes: Mapping[str, tuple[str, Callable[..., Any]]] | None = None,
) -> None:
    """Answers malformed envelopes with a JSON 400 naming the field (instead of the framework's
    fallback, which echoes all headers, tokens included). A no-op outside an app context.

    `authenticate` (the dead-letter sink's OIDC check) gets the Authorization header after the
    declared length is checked and before the body is read; an OrchestratorError it raises
    is the answer. `routes` (rule → endpoint, view) adds GET reads beside /metrics and
    /healthz (step-execute's /executions); they do their own authorization."""
    import flask

    if not flask.has_app_context():
        return
    from werkzeug.exceptions import RequestEntityTooLarge

    app = flask.current_app
    settings = settings or Settings.from_env(os.environ)
    max_bytes, max_depth = settings.max_request_bytes, settings.max_json_depth
    # werkzeug stops reading a body (also a chunked one) past this and raises 413.
    app.config["MAX_CONTENT_LENGTH"] = max_bytes

    def too_large() -> Response:
        response = json_response(
            413,
            {"error": "PayloadTooLarge", "message": f"body: larger than {max_bytes} bytes"},
            {"Connection": "close"},  # the unread rest must not be taken for a next request
        )
        return response

    def reject_malformed() -> Response | None:
        request = flask.request
        if request.path in ("/metrics", "/healthz") or request.endpoint in reads:
            return None
        if request.method != "POST":
            return json_response(405, {"error": "MethodNotAllowed", "message": "POST a CloudEvent"})
        # Refused by its declared length before anything is read (or authenticated).
        if request.content_length is not None and request.content_length > max_bytes:
            return too_large()
        if authenticate is not None:
            try:
                authenticate(request.headers.get("Authorization"))
            except OrchestratorError as error:
                return as_http_exception(error).get_response()
        try:
            # At most one byte past the limit is read (a chunked body declares no length);
            # what was read is kept as the request's data for the framework's parser.
            body = _read_at_most(request.stream, max_bytes + 1)
        except RequestEntityTooLarge:
            return too_large()
        if len(body) > max_bytes:
            return too_large()
        request._cached_data = body
        if _is_json(request.content_type or "") and json_too_deep(body, max_depth):
            message = f"body: JSON nested deeper than {max_depth} levels"
            return json_response(
                400, {"error": "InvalidEvent", "message": message, "problems": [message]}
            )
        problem = _envelope_problem(request.headers, body)
        if problem is None:
            return None
        return json_response(
            400, {"error": "InvalidEvent", "message": problem, "problems": [problem]}
        )

    reads = {endpoint for endpoint, _ in (routes or {}).values()}
    app.before_request(reject_malformed)
    app.add_url_rule("/metrics", "metrics", serve_metrics, methods=["GET"])
    app.add_url_rule("/healthz", "healthz", serve_health, methods=["GET"])
    for rule, (endpoint, view) in (routes or {}).items():
        app.add_url_rule(rule, endpoint, view, methods=["GET"])


def serve_health() -> Response:
    """Liveness/readiness probe of the Knative Service: the process answers HTTP."""
    return json_response(200, {"status": "ok"})


def serve_metrics() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    from shared.runtime.metrics import exposition

    return Response(exposition(), status=200, headers={"Content-Type": CONTENT_TYPE_LATEST})
