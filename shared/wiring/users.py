"""The user directory (the IAM's user API) when IAM_URL is set: the only place that picks it."""

from __future__ import annotations

from shared.ports.users import UserDirectory
from shared.settings import Settings


def make_user_directory(settings: Settings) -> UserDirectory | None:
    if not settings.iam_url:
        return None  # a `startedBy` user cannot be confirmed: admins' flow events get 403
    from shared.adapters.iam import IamClient

    return IamClient.from_settings(settings)
