"""The two kinds of failure every handler can raise, and the HTTP status each maps to.

Knative's broker retries 404, 408, 409, 429 and 5xx. A permanent problem must therefore
answer 400/401/403/422 (never retried); a temporary one answers 503, or 429 with
Retry-After when a tenant is over a cap.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Values echoed in error messages (a cron expression, a type name) are cut to this many
# characters, and whole messages to MAX_MESSAGE: an error answers about a value, it does not
# send a sender's 1 MiB back (nor through every log line and redaction on the way).
ECHO_LIMIT = 80
MAX_MESSAGE = 1000
_LONG_QUOTED = re.compile(r"(['\"])([^'\"]{" + str(ECHO_LIMIT) + r"})[^'\"]+\1")


def cut_echoes(text: str) -> str:
    """`text` with every quoted value longer than ECHO_LIMIT cut, and at most MAX_MESSAGE long."""
    if len(text) <= ECHO_LIMIT:
        return text
    text = _LONG_QUOTED.sub(lambda m: f"{m.group(1)}{m.group(2)}...{m.group(1)}", text)
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + "..."
    return text


class OrchestratorError(Exception):
    """Base of every error the project raises on purpose."""

    status: int = 500

    def __init__(self, message: str, *, problems: Sequence[str] = ()) -> None:
        message = cut_echoes(message)
        super().__init__(message)
        self.message = message
        self.problems: tuple[str, ...] = tuple(cut_echoes(problem) for problem in problems)

    def to_body(self) -> dict[str, object]:
        body: dict[str, object] = {"error": type(self).__name__, "message": self.message}
        if self.problems:
            body["problems"] = list(self.problems)
        return body


class PermanentError(OrchestratorError):
    """Bad input or a refusal: answered 4xx, the broker does not retry."""

    status = 400


class InvalidEvent(PermanentError):
    """The event or its payload is malformed; `problems` names every bad field."""

    status = 400


class Unauthorized(PermanentError):
    """Missing, malformed, badly signed or expired token."""

    status = 401


class Forbidden(PermanentError):
    """A valid token that does not carry the right to do this."""

    status = 403


class Unprocessable(PermanentError):
    """Well-formed but refers to something that does not exist (for example an unknown flow)."""

    status = 422


class TemporaryError(OrchestratorError):
    """A transient failure: answered 503 so the broker retries later."""

    status = 503

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        problems: Sequence[str] = (),
    ) -> None:
        super().__init__(message, problems=problems)
        self.retry_after = retry_after


class OverCapacity(TemporaryError):
    """A tenant is over a cap: answered 429 with Retry-After; the broker retries later."""

    status = 429

    def __init__(self, message: str, *, retry_after: float = 30.0) -> None:
        super().__init__(message, retry_after=retry_after)


class OverBudget(OverCapacity):
    """A tenant is over one of its budgets (docs/security.md): 429 naming the budget, nothing
    done; only that tenant is refused."""

    def __init__(self, budget: str, message: str, *, retry_after: float = 30.0) -> None:
        super().__init__(f"over budget {budget}: {message}", retry_after=retry_after)
        self.budget = budget

    def to_body(self) -> dict[str, object]:
        return {**super().to_body(), "budget": self.budget}
