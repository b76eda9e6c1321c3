"""Who a flow's user is: the one account its runs, penalties, `user` label and flow token are for.

- An event sent to us directly: the authenticated caller (the token's subject); whatever the
  document says (`owners`, `startedBy`) is not trusted.
- The caller is an admin or the hub's service account (HUB_SERVICE_ACCOUNTS), e.g. the event-bus
  bridge speaking for the hub: the `startedBy` user the flow document names, once the IAM
  confirms that user belongs to the flow's tenant; otherwise 403 and nothing is done.
- ORCHESTRATOR_AUTH=off (no IAM): the document's `startedBy`, else its first owner.
- A run a `flow.execute` asks for (`run_user`): the same rule, with the flow's user as decided
  at `flow.starting` where an admin or the hub names nobody (or that same user).
See docs/security.md, "Who a flow's user is".
"""

from __future__ import annotations

from collections.abc import Collection

from shared.errors import Forbidden, InvalidEvent
from shared.events import FlowDocument
from shared.ports.users import UserDirectory
from shared.runtime.auth import Principal


def speaks_for_others(principal: Principal, service_accounts: Collection[str]) -> bool:
    """Admins and the hub's service accounts send events on behalf of a user they name."""
    return principal.kind == "iam" and (principal.is_admin or principal.subject in service_accounts)


def flow_user(
    principal: Principal,
    flow: FlowDocument,
    *,
    directory: UserDirectory | None,
    service_accounts: Collection[str],
) -> str:
    if principal.kind != "iam":
        return flow.user  # auth off, or our own functions re-sending a stored flow
    if not speaks_for_others(principal, service_accounts):
        return principal.subject
    named = flow.started_by
    if not named:
        raise InvalidEvent(
            "startedBy: required when an admin or the hub's service account starts a flow",
            problems=["startedBy: required"],
        )
    return confirmed(named, flow.tenant, directory)


def run_user(
    principal: Principal,
    flow: FlowDocument,
    started_by: str | None,
    *,
    directory: UserDirectory | None,
    service_accounts: Collection[str],
) -> str:
    """The user of a run `flow.execute` asks for; `flow` is the stored flow (its user decided
    when it was started), `started_by` what the event names (OIH's `flow.startedBy`)."""
    if principal.kind != "iam":
        return flow.user
    if not speaks_for_others(principal, service_accounts):
        return principal.subject  # its tenant is the flow's (checked by the authorizer)
    if not started_by or started_by == flow.user:
        return flow.user  # confirmed (or the caller) at flow.starting
    return confirmed(started_by, flow.tenant, directory)


def confirmed(named: str, tenant: str, directory: UserDirectory | None) -> str:
    """`named` if the IAM says it is a user of `tenant`; otherwise 403."""
    if directory is None:
        raise Forbidden("startedBy: cannot be confirmed (no IAM_URL to ask)")
    if directory.tenant_of_user(named) != tenant:
        # One answer whether the user is unknown or another tenant's: no directory oracle.
        raise Forbidden("startedBy: not a user of the flow's tenant")
    return named
