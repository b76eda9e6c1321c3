"""Mapping our errors to HTTP for functions-framework (which ignores return values).

Errors become werkzeug HTTP exceptions with a JSON body naming the problem. Bodies never
echo headers or tokens.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from cloudevents.http import CloudEvent
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from shared.errors import OrchestratorError, TemporaryError
from shared.security.redact import redact

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


def install_guards() -> None:
    """Answers malformed envelopes with a JSON 400 naming the field (instead of the framework's
    fallback, which echoes all headers, tokens included). A no-op outside an app context."""
    import flask

    if not flask.has_app_context():
        return
    app = flask.current_app

    def reject_malformed() -> Response | None:
        if flask.request.path in ("/metrics", "/healthz"):
            return None
        if flask.request.method != "POST":
            return json_response(405, {"error": "MethodNotAllowed", "message": "POST a CloudEvent"})
        problem = _envelope_problem(flask.request.headers, flask.request.get_data())
        if problem is None:
            return None
        return json_response(
            400, {"error": "InvalidEvent", "message": problem, "problems": [problem]}
        )

    app.before_request(reject_malformed)
    app.add_url_rule("/metrics", "metrics", serve_metrics, methods=["GET"])
    app.add_url_rule("/healthz", "healthz", serve_health, methods=["GET"])


def serve_health() -> Response:
    """Liveness/readiness probe of the Knative Service: the process answers HTTP."""
    return json_response(200, {"status": "ok"})


def serve_metrics() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    from shared.runtime.metrics import exposition

    return Response(exposition(), status=200, headers={"Content-Type": CONTENT_TYPE_LATEST})
