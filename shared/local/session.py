"""The session file of a running `make run` (.run/session.json, mode 0600, removed on exit):
where the broker, Redis and the functions listen, for `send`, `invoke`, the operator commands
and the demo."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_STATE_DIR = Path(".run")
SESSION_FILE = "session.json"
LOG_DIR = "logs"  # <state dir>/logs/<part>.log: each part's output


@dataclass
class RunSession:
    """Where everything of one `make run` listens; what `send`, `invoke` and the demo need."""

    state_dir: str
    broker_url: str
    redis_url: str
    functions: dict[str, str]
    env: dict[str, str]  # the functions' environment (README.md "Settings"), secrets included
    iam_url: str | None = None
    pid: int = field(default_factory=os.getpid)

    @property
    def iam_service_token(self) -> str | None:
        return self.env.get("IAM_SERVICE_TOKEN")

    @property
    def orchestrator_key(self) -> str:
        return self.env["ORCHESTRATOR_KEY"]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(asdict(self), out)

    @classmethod
    def load(cls, state_dir: Path) -> RunSession | None:
        """The session of a running `make run` in `state_dir`, or None."""
        path = state_dir / SESSION_FILE
        try:
            session = cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        try:
            os.kill(session.pid, 0)
        except ProcessLookupError:
            return None  # left over from a run that was killed
        except PermissionError:
            pass
        return session
