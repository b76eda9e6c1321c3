"""Example global component: logs what it is given (a global component has no step queue)."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("examples.logger")


def log(msg: dict[str, Any], fields: dict[str, Any]) -> None:
    """The catalogue's function name for this component is `log`."""
    logger.info("global logger: %s", msg.get("data"))
