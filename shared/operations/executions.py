"""The original orchestrator's HTTP API, `GET /executions?filter[flowId]=<id>` and
`GET /executions/<execId>` (services/component-orchestrator/src/HttpApi.js), on step-execute,
which keeps the run records (docs/oih.md, "Every OIH event and endpoint").

An execution is one of our runs: the original's names where they mean the same
(`flowExecId`, `flowId`, `tenant`, `errors`, `createdAt`, `updatedAt`), then ours (status,
steps, messages, bytes, ...). Unlike the original, the caller must hold an IAM token with
`flows.read` (or be an admin), and sees only its tenant's runs: another tenant's run is
answered as an unknown one (404), so the answers do not tell which ids exist elsewhere.
What is kept: running runs, and ended ones within the run retention (`orchestrator runs`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from werkzeug.wrappers import Response

from shared.errors import Forbidden, InvalidEvent, OrchestratorError
from shared.execution import runs
from shared.operations.views import run_rows
from shared.runtime.auth import Principal

READ_PERMISSION = "flows.read"  # the Flow Repository's read permission (flows.read)
LIMIT = 100  # the original's `.limit(100)`


class ExecutionNotFound(OrchestratorError):
    status = 404


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()


def as_execution(record: runs.RunRecord) -> dict[str, Any]:
    """A run as the original's flow-state document names it, then our own fields."""
    return {
        "flowExecId": record.run_id,
        "flowId": record.flow_id,
        "tenant": record.tenant,
        "errors": record.failures,
        "createdAt": _iso(record.started_at),
        "updatedAt": _iso(record.ended_at if record.ended_at is not None else record.started_at),
        **record.to_dict(),
    }


def tenant_seen(principal: Principal) -> str | None:
    """The tenant whose runs the caller sees (None: every tenant's); Forbidden (403) without
    the read permission."""
    if principal.kind == "auth-off" or principal.is_admin:
        return None
    if principal.kind != "iam" or READ_PERMISSION not in principal.permissions:
        raise Forbidden(f"token lacks the permission {READ_PERMISSION}")
    if not principal.tenant:
        raise Forbidden("token names no tenant")
    return principal.tenant


def of_flow(redis: Redis, principal: Principal, flow_id: str | None) -> dict[str, Any]:
    """`GET /executions?filter[flowId]=...`: the flow's runs, running first (oldest first),
    then ended ones (newest first), at most LIMIT."""
    if not flow_id:
        raise InvalidEvent("filter[flowId] is required.", problems=["filter[flowId]: required"])
    tenant = tenant_seen(principal)
    running, recent = run_rows(redis, limit=LIMIT, tenant=tenant, flow=flow_id)
    return {"data": [as_execution(r) for r in [*running, *recent][:LIMIT]]}


def one(redis: Redis, principal: Principal, exec_id: str) -> dict[str, Any]:
    """`GET /executions/<execId>`: the run, or 404 (also for another tenant's)."""
    tenant = tenant_seen(principal)
    record = runs.get(redis, exec_id)
    if record is None or (tenant is not None and record.tenant != tenant):
        raise ExecutionNotFound("Execution not found")
    return {"data": as_execution(record)}


Reader = Callable[[], tuple[Redis, Callable[[str | None], Principal]]]


def http_routes(reader: Reader) -> dict[str, tuple[str, Callable[..., Any]]]:
    """The Flask routes (rule → endpoint, view) for `install_guards(routes=...)`; `reader`
    gives the function's Redis and its bearer-token check (built on first use)."""
    import flask

    from shared.runtime.http import json_response

    def answer(produce: Callable[[Redis, Principal], dict[str, Any]]) -> Response:
        try:
            redis, caller = reader()
            principal = caller(flask.request.headers.get("Authorization"))
            return json_response(200, produce(redis, principal))
        except OrchestratorError as error:  # the original's shape: {"error": message}
            return json_response(error.status, {"error": error.message})
        except RedisError:
            return json_response(503, {"error": "redis unavailable"})

    def list_view() -> Response:
        flow_id = flask.request.args.get("filter[flowId]")
        return answer(lambda redis, principal: of_flow(redis, principal, flow_id))

    def one_view(exec_id: str) -> Response:
        return answer(lambda redis, principal: one(redis, principal, exec_id))

    return {
        "/executions": ("executions", list_view),
        "/executions/<exec_id>": ("execution", one_view),
    }
