"""The one interface every queue backend implements (QUEUE_BACKEND: `redis` or `sqs`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shared.ports.step_message import Delivery, StepMessage

CONSUMER_GROUP = "workers"  # Redis Streams: the group every replica of a step consumes in


class StepQueue(Protocol):
    def publish(self, queue: str, messages: Sequence[StepMessage]) -> None:
        """Appends messages to one step's queue; raises TemporaryError / PermanentError."""
        ...

    def receive(
        self, queue: str, consumer: str, *, max_messages: int = 10, wait_seconds: float = 1.0
    ) -> list[Delivery]:
        """Up to `max_messages` messages for this consumer, waiting at most `wait_seconds`."""
        ...

    def ack(self, queue: str, deliveries: Sequence[Delivery]) -> None:
        """The messages are done: they are never delivered again (claim-checks deleted)."""
        ...

    def reclaim(self, queue: str, *, min_idle_seconds: float) -> int:
        """Hands messages received but not acknowledged for that long to another consumer."""
        ...

    def drop(self, queue: str) -> None:
        """The step's flow stopped: remove its queue where the backend allows it."""
        ...
