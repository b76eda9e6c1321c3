"""Process-wide logging: one line per record, secrets redacted."""

from __future__ import annotations

import logging
import os

from shared.security.redact import install_redaction


def configure_logging(process: str) -> None:
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    root = logging.getLogger()
    if not any(getattr(h, "_orchestrator", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s")
        )
        handler._orchestrator = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    # pika logs every connection step at INFO (the amqp backend opens many): its warnings only
    logging.getLogger("pika").setLevel(max(logging.WARNING, root.level))
    install_redaction()
