"""The hub's RabbitMQ event bus (pika): consume our queue bound to the names we take, publish
to the `event-bus` topic exchange. pika's errors become ours: TemporaryError (connection,
channel closed, broker unreachable) or PermanentError (access refused, bad URL)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator

import pika
import pika.exceptions

from shared.errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)

# A handler answers True (done: ack), False (retry later: nack with requeue) or raises.
MessageHandler = Callable[[str, bytes], bool]


@contextlib.contextmanager
def amqp_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except pika.exceptions.ProbableAccessDeniedError as exc:
        raise PermanentError(f"event bus {operation}: access refused") from exc
    except pika.exceptions.ProbableAuthenticationError as exc:
        raise PermanentError(f"event bus {operation}: authentication refused") from exc
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise TemporaryError(f"event bus {operation}: {type(exc).__name__}") from exc


class EventBus:
    """One connection per direction (pika's BlockingConnection is not thread-safe)."""

    def __init__(self, url: str, *, exchange: str, queue: str) -> None:
        try:
            self.parameters = pika.URLParameters(url)
        except Exception as exc:  # pika raises plain ValueError/AttributeError on a bad URL
            raise PermanentError("OIH_EVENT_BUS: not an AMQP URL") from exc
        self.parameters.heartbeat = 30
        self.exchange = exchange
        self.queue = queue
        self._publisher: pika.BlockingConnection | None = None
        self._publish_lock = threading.Lock()
        self._stopping = threading.Event()

    def _connect(self) -> pika.BlockingConnection:
        with amqp_errors("connect"):
            return pika.BlockingConnection(self.parameters)

    def publish(self, routing_key: str, body: bytes) -> None:
        """Persistent, with publisher confirms: returns once the broker has it."""
        with self._publish_lock:
            for attempt in (1, 2):  # a connection idle for long may have been closed: once more
                try:
                    if self._publisher is None or self._publisher.is_closed:
                        self._publisher = self._connect()
                        channel = self._publisher.channel()
                        channel.exchange_declare(self.exchange, exchange_type="topic")
                        channel.confirm_delivery()
                        self._channel = channel
                    with amqp_errors("publish"):
                        self._channel.basic_publish(
                            self.exchange,
                            routing_key,
                            body,
                            pika.BasicProperties(content_type="application/json", delivery_mode=2),
                            mandatory=False,
                        )
                    return
                except TemporaryError:
                    self._publisher = None
                    if attempt == 2:
                        raise

    def consume(self, names: Iterable[str], handle: MessageHandler) -> None:
        """Blocks: binds our durable queue to each name and hands every message to `handle`
        until `stop()`; reconnects after a lost connection."""
        while not self._stopping.is_set():
            try:
                connection = self._connect()
            except TemporaryError as exc:
                log.warning("event bus unreachable (%s): retrying", exc.message)
                self._stopping.wait(2.0)
                continue
            try:
                with amqp_errors("consume"):
                    channel = connection.channel()
                    channel.exchange_declare(self.exchange, exchange_type="topic")
                    channel.queue_declare(self.queue, durable=True)
                    for name in names:
                        channel.queue_bind(self.queue, self.exchange, routing_key=name)
                    channel.basic_qos(prefetch_count=16)
                    while not self._stopping.is_set():
                        for method, _, body in channel.consume(self.queue, inactivity_timeout=0.5):
                            if method is None:
                                break  # idle: look at the stop flag
                            self._deliver(channel, method, body, handle)
                    channel.cancel()
            except TemporaryError as exc:
                log.warning("event bus connection lost (%s): reconnecting", exc.message)
            finally:
                with contextlib.suppress(Exception):
                    connection.close()

    @staticmethod
    def _deliver(channel: object, method: object, body: bytes, handle: MessageHandler) -> None:
        tag = method.delivery_tag  # type: ignore[attr-defined]
        key = method.routing_key  # type: ignore[attr-defined]
        try:
            done = handle(key, body)
        except Exception:  # the handler failed: the message goes back for another try
            log.exception("event bus message %s: handler failed", key)
            done = False
        if done:
            channel.basic_ack(tag)  # type: ignore[attr-defined]
        else:
            channel.basic_nack(tag, requeue=True)  # type: ignore[attr-defined]

    def stop(self) -> None:
        self._stopping.set()
        with self._publish_lock, contextlib.suppress(Exception):
            if self._publisher is not None:
                self._publisher.close()
