"""RabbitMQ as ferryman's step transport (QUEUE_BACKEND=amqp, docs/oih.md): pika for AMQP,
the management plugin's HTTP API for users and permissions. Every error of either becomes
ours: TemporaryError (unreachable, connection or channel lost, unroutable, 5xx) or
PermanentError (access refused, bad URL, 4xx).

- `RabbitMqTopology`: per flow the exchange, queues and bindings OIH's QueueCreator makes
  (shared/ports/ferryman.py names them), the shared backchannel exchange and our queue on it;
  consumer counts (a step is Ready when its ferryman consumes).
- `RabbitMqManagement`: per flow a RabbitMQ user that may read only its own steps' queues and
  write only to the backchannel and its own exchange, configure nothing (OIH's rule).
- `RabbitMqStepQueue`: the StepQueue step-execute publishes through, in ferryman's format.
- `BackchannelConsumer`: what `orchestrator backchannel` reads ferryman's replies with.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlparse, urlunparse

import pika
import pika.exceptions
import requests

from shared.errors import PermanentError, TemporaryError
from shared.ports import ferryman as names
from shared.ports.ferryman import BackchannelMessage
from shared.ports.step_message import MSG_OPTS, Delivery, StepMessage

log = logging.getLogger(__name__)

REBOUND_QUEUE_TTL_MS = 10 * 60 * 1000  # QueueCreator's


@contextlib.contextmanager
def amqp_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except pika.exceptions.ProbableAccessDeniedError as exc:
        raise PermanentError(f"rabbitmq {operation}: access refused") from exc
    except pika.exceptions.ProbableAuthenticationError as exc:
        raise PermanentError(f"rabbitmq {operation}: authentication refused") from exc
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 403:
            raise PermanentError(
                f"rabbitmq {operation}: access refused ({exc.reply_text})"
            ) from exc
        raise TemporaryError(f"rabbitmq {operation}: {exc.reply_code} {exc.reply_text}") from exc
    except pika.exceptions.UnroutableError as exc:
        raise TemporaryError(f"rabbitmq {operation}: unroutable (is the flow deployed?)") from exc
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise TemporaryError(f"rabbitmq {operation}: {type(exc).__name__}") from exc


def parameters(url: str, *, name: str = "AMQP_URL") -> pika.URLParameters:
    try:
        params = pika.URLParameters(url)
    except Exception as exc:  # pika raises plain ValueError/AttributeError on a bad URL
        raise PermanentError(f"{name}: not an AMQP URL") from exc
    params.heartbeat = 30
    params.blocked_connection_timeout = 30
    return params


def vhost_of(url: str) -> str:
    path = urlparse(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def with_credentials(url: str, user: str, password: str) -> str:
    """`url` (AMQP_URL or WORKER_AMQP_URL) with only these credentials."""
    parsed = urlparse(url)
    address = parsed.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{address}"
    return urlunparse(parsed._replace(netloc=netloc))


# --- topology ---------------------------------------------------------------------------------
class RabbitMqTopology:
    """Declares and removes a flow's exchange, queues and bindings (idempotent)."""

    def __init__(self, url: str) -> None:
        self.parameters = parameters(url)

    @contextlib.contextmanager
    def _channel(self, operation: str) -> Iterator[Any]:
        with amqp_errors(operation):
            connection = pika.BlockingConnection(self.parameters)
            try:
                yield connection.channel()
            finally:
                with contextlib.suppress(Exception):
                    connection.close()

    def ensure_backchannel(self, channel: Any = None) -> None:
        if channel is None:
            with self._channel("declare backchannel") as fresh:
                self.ensure_backchannel(fresh)
            return
        channel.exchange_declare(names.BACKCHANNEL_EXCHANGE, "topic", durable=True)
        channel.queue_declare(
            names.BACKCHANNEL_QUEUE,
            durable=True,
            arguments={
                "x-dead-letter-exchange": names.BACKCHANNEL_EXCHANGE,
                "x-dead-letter-routing-key": names.DEAD_LETTER_KEY,
            },
        )
        # One queue for all three keys keeps a delivery's outputs, error and end in order.
        for key in names.BACKCHANNEL_KEYS:
            channel.queue_bind(names.BACKCHANNEL_QUEUE, names.BACKCHANNEL_EXCHANGE, key)

    def ensure_flow(self, flow_id: str, steps: Sequence[str]) -> None:
        exchange = names.flow_exchange(flow_id)
        with self._channel("declare flow queues") as channel:
            self.ensure_backchannel(channel)
            channel.exchange_declare(exchange, "topic", durable=True)
            channel.exchange_declare(names.COLLECTOR_EXCHANGE, "topic", durable=True)
            channel.exchange_bind(names.COLLECTOR_EXCHANGE, exchange, "#")
            for step in steps:
                messages = names.messages_queue(flow_id, step)
                rebounds = names.rebounds_queue(flow_id, step)
                channel.queue_declare(
                    messages,
                    durable=True,
                    arguments={
                        "x-dead-letter-exchange": exchange,
                        "x-dead-letter-routing-key": names.routing_key(flow_id, step, "deadletter"),
                    },
                )
                channel.queue_declare(
                    rebounds,
                    durable=True,
                    arguments={
                        "x-message-ttl": REBOUND_QUEUE_TTL_MS,
                        "x-dead-letter-exchange": exchange,
                        "x-dead-letter-routing-key": names.routing_key(flow_id, step, "requeue"),
                    },
                )
                channel.queue_bind(messages, exchange, names.routing_key(flow_id, step, "input"))
                channel.queue_bind(messages, exchange, names.routing_key(flow_id, step, "requeue"))
                channel.queue_bind(rebounds, exchange, names.routing_key(flow_id, step, "rebound"))

    def delete_flow(self, flow_id: str, steps: Sequence[str]) -> None:
        with self._channel("delete flow queues") as channel:
            for step in steps:
                channel.queue_delete(names.messages_queue(flow_id, step))
                channel.queue_delete(names.rebounds_queue(flow_id, step))
            channel.exchange_delete(names.flow_exchange(flow_id))

    def consumers(self, queue: str) -> int:
        """Consumers on `queue` (0 when it does not exist)."""
        try:
            with self._channel("queue consumers") as channel:
                ok = channel.queue_declare(queue, passive=True)
                return int(ok.method.consumer_count)
        except TemporaryError as exc:
            if isinstance(exc.__cause__, pika.exceptions.ChannelClosedByBroker):
                return 0  # 404: not declared (yet)
            raise


# --- users and permissions (management HTTP API) ----------------------------------------------
def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256 form: only this travels, never the password."""
    salt = salt if salt is not None else os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


class RabbitMqManagement:
    def __init__(self, url: str, vhost: str, *, timeout: float = 15.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise PermanentError("AMQP_MANAGEMENT_URL: not an http(s):// URL")
        self.auth = (unquote(parsed.username or "guest"), unquote(parsed.password or "guest"))
        address = parsed.netloc.rpartition("@")[2]
        self.base = urlunparse(parsed._replace(netloc=address, path=parsed.path.rstrip("/")))
        self.vhost = vhost
        self.timeout = timeout
        self.http = requests.Session()

    def _call(
        self, method: str, path: str, body: object = None, *, missing_ok: bool = False
    ) -> Any:
        try:
            answer = self.http.request(
                method, f"{self.base}/api/{path}", json=body, auth=self.auth, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise TemporaryError(f"rabbitmq management unreachable: {type(exc).__name__}") from exc
        if answer.status_code == 404 and missing_ok:
            return None
        if answer.status_code >= 500 or answer.status_code == 429:
            raise TemporaryError(f"rabbitmq management {method} {path.split('/')[0]}: "
                                 f"{answer.status_code}")  # fmt: skip
        if answer.status_code >= 400:
            # 401/403: our management user lacks the `administrator` tag; an operator fixes it
            raise PermanentError(f"rabbitmq management refused {method} {path.split('/')[0]}: "
                                 f"{answer.status_code}")  # fmt: skip
        return answer.json() if answer.content else None

    def set_user(self, username: str, password: str, *, read: str, write: str) -> None:
        """Creates or replaces the user and its permissions on our vhost (configure: none)."""
        user = quote(username, safe="")
        self._call("PUT", f"users/{user}", {
            "password_hash": password_hash(password),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": "",
        })  # fmt: skip
        self._call("PUT", f"permissions/{quote(self.vhost, safe='')}/{user}",
                   {"configure": "^$", "write": write, "read": read})  # fmt: skip

    def delete_user(self, username: str) -> None:
        self._call("DELETE", f"users/{quote(username, safe='')}", missing_ok=True)

    def user_exists(self, username: str) -> bool:
        return self._call("GET", f"users/{quote(username, safe='')}", missing_ok=True) is not None

    def delete_queues(self, pattern: str) -> int:
        """Deletes every queue of our vhost whose name matches the regular expression."""
        vhost = quote(self.vhost, safe="")
        found = self._call("GET", f"queues/{vhost}?name={quote(pattern)}&use_regex=true"
                                  "&columns=name")  # fmt: skip
        listed = found.get("items", found) if isinstance(found, dict) else (found or [])
        names_found = [str(q["name"]) for q in listed if isinstance(q, dict) and "name" in q]
        for name in names_found:
            self._call("DELETE", f"queues/{vhost}/{quote(name, safe='')}", missing_ok=True)
        return len(names_found)

    def delete_exchange(self, name: str) -> None:
        vhost = quote(self.vhost, safe="")
        self._call("DELETE", f"exchanges/{vhost}/{quote(name, safe='')}", missing_ok=True)


class RabbitMqFlowAccess:
    """`FlowQueueAdmin`: deploy's side of the amqp backend (topology over AMQP, users over
    the management API)."""

    def __init__(self, amqp_url: str, management_url: str) -> None:
        self.topology = RabbitMqTopology(amqp_url)
        self.management = RabbitMqManagement(management_url, vhost_of(amqp_url))

    def grant(self, flow_id: str, steps: Sequence[str], username: str, password: str) -> None:
        self.topology.ensure_flow(flow_id, steps)
        self.management.set_user(
            username, password,
            read=names.read_pattern(flow_id), write=names.write_pattern(flow_id),
        )  # fmt: skip

    def revoke(self, flow_id: str, username: str) -> None:
        self.management.delete_user(username)  # first: its connections can do nothing more
        self.management.delete_queues(names.read_pattern(flow_id))
        self.management.delete_exchange(names.flow_exchange(flow_id))

    def consumers(self, flow_id: str, step_id: str) -> int:
        return self.topology.consumers(names.messages_queue(flow_id, step_id))


# --- publishing step messages in ferryman's format --------------------------------------------
def ferryman_body(message: StepMessage) -> bytes:
    """`{data, metadata, attachments, passthrough}` (+ a webhook's keys), as the original
    orchestrator built a step's message: a run's first steps get the rest of the message the
    run was started with (`context`, shared/ports/step_message.py), the others their data.
    `msgOpts` are transport options and stay ours."""
    parts = {k: v for k, v in message.context.items() if k != MSG_OPTS}
    body = {"metadata": {}, "attachments": {}, "passthrough": {}, **parts, "data": message.data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def ferryman_headers(message: StepMessage, token: str, user_id: str) -> dict[str, str]:
    return {
        "taskId": message.flow_id,
        "execId": message.run_id,
        "userId": user_id,
        "stepId": message.step_id,
        "messageId": message.message_id,
        "parentMessageId": message.message_id,
        names.TOKEN_HEADER: token,
    }


@dataclass(frozen=True)
class SignedMessage:
    token: str
    user_id: str


class RabbitMqStepQueue:
    """Publishes to the flow's exchange with the step's input routing key, persistent and
    `mandatory`, one AMQP transaction per batch (the broker holds every message of it once
    the commit returns; 2-3x the rate of a confirm per message). A message no queue took (the
    flow is not deployed) comes back: the batch raises TemporaryError and is published again
    later, its other messages as duplicates, which step-execute drops by messageId. Its
    consumers are ferryman processes: `receive` is not ours to call."""

    def __init__(self, url: str, sign: Callable[[StepMessage], SignedMessage]) -> None:
        self.parameters = parameters(url)
        self.sign = sign
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._returned: list[str] = []
        self._lock = threading.Lock()

    def _ready_channel(self) -> Any:
        if self._connection is None or self._connection.is_closed or self._channel.is_closed:
            with amqp_errors("connect"):
                self._connection = pika.BlockingConnection(self.parameters)
                self._channel = self._connection.channel()
                self._channel.add_on_return_callback(self._on_return)
                self._channel.tx_select()
        return self._channel

    def _on_return(self, _channel: Any, _method: Any, properties: Any, _body: bytes) -> None:
        self._returned.append(str(getattr(properties, "message_id", "") or ""))

    def publish(self, queue: str, messages: Sequence[StepMessage]) -> None:
        if not messages:
            return
        prepared = []
        for message in messages:
            signed = self.sign(message)
            prepared.append((message, ferryman_headers(message, signed.token, signed.user_id),
                             ferryman_body(message)))  # fmt: skip
        with self._lock:
            for attempt in (1, 2):  # an idle connection may have been closed: once more
                try:
                    channel = self._ready_channel()
                    self._returned.clear()
                    with amqp_errors("publish"):
                        for message, headers, body in prepared:
                            channel.basic_publish(
                                names.flow_exchange(message.flow_id),
                                names.routing_key(message.flow_id, message.step_id, "input"),
                                body,
                                pika.BasicProperties(
                                    content_type="application/json",
                                    delivery_mode=2,
                                    headers=headers,
                                    message_id=message.message_id,
                                ),
                                mandatory=True,
                            )
                        channel.tx_commit()
                        self._connection.process_data_events(0)  # type: ignore[union-attr]
                    break
                except TemporaryError:
                    self._connection = None
                    if attempt == 2:
                        raise
        if self._returned:
            raise TemporaryError(
                f"rabbitmq publish: {len(self._returned)} message(s) unroutable "
                "(is the flow deployed?)"
            )

    def receive(
        self, queue: str, consumer: str, *, max_messages: int = 10, wait_seconds: float = 1.0
    ) -> list[Delivery]:
        raise PermanentError("QUEUE_BACKEND=amqp: step queues are consumed by ferryman")

    def ack(self, queue: str, deliveries: Sequence[Delivery]) -> None:
        raise PermanentError("QUEUE_BACKEND=amqp: ferryman acknowledges its own messages")

    def reclaim(self, queue: str, *, min_idle_seconds: float) -> int:
        return 0  # RabbitMQ gives an unacknowledged message back when its consumer is gone

    def drop(self, queue: str) -> None:
        return None  # deploy removes the flow's queues with its user (queue_credentials)

    def close(self) -> None:
        with self._lock, contextlib.suppress(Exception):
            if self._connection is not None:
                self._connection.close()
            self._connection = None


# --- the backchannel ---------------------------------------------------------------------------
# True: done (ack); False: not now (nack, requeue); a number: hold it (unacknowledged) and
# hand it over again, `waited=True`, after that many seconds.
BackchannelHandler = Callable[[BackchannelMessage, bool], "bool | float"]


class BackchannelConsumer:
    def __init__(self, url: str, *, prefetch: int = 1000) -> None:
        self.parameters = parameters(url)
        self.prefetch = prefetch  # held messages count against it
        self._stopping = threading.Event()
        self.connected = threading.Event()

    def consume(self, handle: BackchannelHandler) -> None:
        """Blocks until `stop()`: every reply on our backchannel queue to `handle`; reconnects
        after a lost connection (unacknowledged replies, held ones included, come back)."""
        topology = RabbitMqTopology.__new__(RabbitMqTopology)
        topology.parameters = self.parameters
        while not self._stopping.is_set():
            try:
                with amqp_errors("connect"):
                    connection = pika.BlockingConnection(self.parameters)
            except TemporaryError as exc:
                log.warning("backchannel: rabbitmq unreachable (%s): retrying", exc.message)
                self._stopping.wait(2.0)
                continue
            held: list[tuple[float, int, BackchannelMessage]] = []
            try:
                with amqp_errors("consume"):
                    channel = connection.channel()
                    topology.ensure_backchannel(channel)
                    channel.basic_qos(prefetch_count=self.prefetch)
                    self.connected.set()
                    while not self._stopping.is_set():
                        for method, properties, body in channel.consume(
                            names.BACKCHANNEL_QUEUE, inactivity_timeout=0.1
                        ):
                            if method is not None:
                                message = BackchannelMessage(
                                    routing_key=str(method.routing_key),
                                    headers=dict(properties.headers or {}),
                                    body=bytes(body or b""),
                                    redelivered=bool(method.redelivered),
                                )
                                self._settle(channel, method.delivery_tag, message, handle, held,
                                             waited=False)  # fmt: skip
                            now = time.monotonic()
                            due = [h for h in held if h[0] <= now]
                            for item in due:
                                held.remove(item)
                                self._settle(channel, item[1], item[2], handle, held, waited=True)
                            if method is None or self._stopping.is_set():
                                break  # idle: look at the stop flag
                    channel.cancel()
            except TemporaryError as exc:
                log.warning("backchannel: connection lost (%s): reconnecting", exc.message)
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    connection.close()

    def _settle(
        self,
        channel: Any,
        tag: int,
        message: BackchannelMessage,
        handle: BackchannelHandler,
        held: list[tuple[float, int, BackchannelMessage]],
        *,
        waited: bool,
    ) -> None:
        try:
            done = handle(message, waited)
        except Exception:  # the handler failed: back for another try
            log.exception("backchannel: handler failed")
            done = False
        if done is True:
            channel.basic_ack(tag)
        elif done is False:
            channel.basic_nack(tag, requeue=True)
            self._stopping.wait(0.5)
        else:
            held.append((time.monotonic() + float(done), tag, message))

    def stop(self) -> None:
        self._stopping.set()
