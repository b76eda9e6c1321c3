"""Who a user is: the IAM's directory, asked before we act for a user someone else names."""

from __future__ import annotations

from typing import Protocol


class UserDirectory(Protocol):
    def tenant_of_user(self, user_id: str) -> str | None:
        """The tenant the user belongs to; None if the IAM knows no such user.

        Raises TemporaryError when the IAM cannot answer (the event is retried)."""
        ...
