"""`orchestrator token --tenant T [--sub U] [--permissions P ...] [--admin]`: an IAM token to try
things by hand (docs/operator.md).

Asks the IAM's token API (the embedded IAM of a running `make run`, or IAM_URL with
IAM_SERVICE_TOKEN from the environment) and prints only the token, so it can be captured:
`TOKEN=$(orchestrator token --tenant acme)`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from shared.local.embedded_iam import DEFAULT_TOKEN_SECONDS, print_token


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("token", help="print an IAM token for trying things by hand")
    parser.add_argument("--tenant", required=True, help="the token's tenant claim")
    parser.add_argument("--sub", default="dev-user", help="the token's subject (user id)")
    parser.add_argument(
        "--permissions",
        nargs="+",
        default=["flows.control"],
        help="permissions claim (default: flows.control)",
    )
    parser.add_argument("--admin", action="store_true", help="admin (permission all)")
    parser.add_argument("--expires-in", type=int, default=DEFAULT_TOKEN_SECONDS, help="seconds")
    parser.add_argument("--state-dir", default=None, help="the `make run` state dir (.run)")
    parser.set_defaults(func=cmd_token)


def _iam_address(state_dir: str | None) -> tuple[str, str] | None:
    url, service_token = os.environ.get("IAM_URL"), os.environ.get("IAM_SERVICE_TOKEN")
    if url and service_token:
        return url, service_token
    from shared.local.session import DEFAULT_STATE_DIR, RunSession

    session = RunSession.load(Path(state_dir) if state_dir else DEFAULT_STATE_DIR)
    if session is None or not session.iam_url or not session.iam_service_token:
        return None
    return session.iam_url, session.iam_service_token


def cmd_token(args: argparse.Namespace) -> int:
    address = _iam_address(args.state_dir)
    if address is None:
        print(
            "orchestrator token: no IAM: start `make run` (auth on) or set IAM_URL and "
            "IAM_SERVICE_TOKEN",
            file=sys.stderr,
        )
        return 2
    try:
        print_token(
            args.tenant,
            sub=args.sub,
            permissions=tuple(args.permissions),
            admin=args.admin,
            expires_in=args.expires_in,
            iam_url=address[0],
            service_token=address[1],
        )
    except Exception as exc:  # connection refused, refusal: one line, no traceback
        print(f"orchestrator token: {exc}", file=sys.stderr)
        return 1
    return 0
