"""The amqp step transport against a real RabbitMQ and the real ferryman (npm): messages in
ferryman's format reach the tiny test connector, its replies come back through the
backchannel as step events, forged replies are ignored, and the flow token stays out of
everything we emit or log."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pika
import pytest
import requests
from cloudevents.http import CloudEvent
from redis import Redis

from shared.adapters.rabbitmq import (
    BackchannelConsumer,
    RabbitMqManagement,
    RabbitMqStepQueue,
    RabbitMqTopology,
    SignedMessage,
    ferryman_body,
    vhost_of,
    with_credentials,
)
from shared.cli.backchannel import serve_metrics
from shared.clock import SystemClock
from shared.errors import PermanentError, TemporaryError
from shared.events import types as t
from shared.interop.backchannel import Backchannel
from shared.ports import ferryman as names
from shared.ports.step_message import StepMessage
from shared.runtime import metrics
from shared.security import tokens
from tests.support.ferryman import FerrymanLauncher, wait_for
from tests.support.rabbitmq import RabbitMq

KEY = "test-orchestrator-key-0123456789abcdef"
FLOW_TOKEN = "flow-token-secret-3f9c2a7d1b8e4c6a"


def payload(event: CloudEvent) -> dict[str, Any]:
    data = event.get_data()
    assert isinstance(data, dict)
    return data


@dataclass
class Replies:
    backchannel: Backchannel
    consumer: BackchannelConsumer
    thread: threading.Thread
    events: list[CloudEvent] = field(default_factory=list)

    def of(self, message_id: str) -> list[CloudEvent]:
        return [e for e in self.events if payload(e)["messageId"] == message_id]


@pytest.fixture()
def replies(amqp_vhost: str, redis: Redis) -> Iterator[Replies]:
    events: list[CloudEvent] = []
    backchannel = Backchannel(redis, KEY, SystemClock(), events.append)
    consumer = BackchannelConsumer(amqp_vhost)
    thread = threading.Thread(target=consumer.consume, args=(backchannel.handle,), daemon=True)
    thread.start()
    assert consumer.connected.wait(60), "backchannel consumer did not connect"
    try:
        yield Replies(backchannel, consumer, thread, events)
    finally:
        consumer.stop()
        thread.join(timeout=10)


def deploy_step(rabbitmq: RabbitMq, amqp_url: str, flow: str, step: str) -> dict[str, str]:
    """What deploy does for one step: queues, the flow's user, the step's environment."""
    RabbitMqTopology(amqp_url).ensure_flow(flow, [step])
    admin = RabbitMqManagement(
        f"http://guest:guest@127.0.0.1:{rabbitmq.management_port}", vhost_of(amqp_url)
    )
    password = f"pw-{flow}"
    admin.set_user(names.user_name(flow), password, read=names.read_pattern(flow),
                   write=names.write_pattern(flow))  # fmt: skip
    env = names.step_environment(flow, step, "co-test-connector", {"API_URI": "http://127.0.0.1:9"})
    env[names.AMQP_URI_VARIABLE] = with_credentials(amqp_url, names.user_name(flow), password)
    return env


def signer(function: str, *, key: str = KEY) -> Any:
    def sign(message: StepMessage) -> SignedMessage:
        claims = {
            "flowId": message.flow_id, "stepId": message.step_id, "userId": "u1",
            "tenant": message.tenant, "function": function, "fields": {"tag": "t1"},
            "nodeSettings": {}, "apiKey": FLOW_TOKEN, names.RUN_CLAIM: message.run_id,
            names.MESSAGE_CLAIM: message.message_id, names.ATTEMPT_CLAIM: message.attempt,
        }  # fmt: skip
        token = tokens.sign_orchestrator_token(key, claims, ttl_seconds=600, clock=SystemClock())
        return SignedMessage(token, "u1")

    return sign


def message(
    flow: str, step: str, message_id: str, data: Any, attempt: int = 0, context: Any = None
) -> StepMessage:
    return StepMessage(
        run_id="run-1", flow_id=flow, step_id=step, message_id=message_id, tenant="acme",
        attempt=attempt, data_json=json.dumps(data), token="unused",
        context_json=json.dumps(context) if context else "",
    )  # fmt: skip


def test_two_records_through_the_real_ferryman(
    rabbitmq: RabbitMq, amqp_vhost: str, ferryman: FerrymanLauncher, replies: Replies,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    env = deploy_step(rabbitmq, amqp_vhost, "f1", "s1")
    process = ferryman.start(env)
    topology = RabbitMqTopology(amqp_vhost)
    wait_for(lambda: topology.consumers(names.messages_queue("f1", "s1")) == 1, 60,
             f"ferryman consuming (log: {process.output()[-2000:]})")  # fmt: skip
    queue = RabbitMqStepQueue(amqp_vhost, signer("emitTwo"))
    # a first step: the rest of the run's message travels beside the data (msgOpts stays ours)
    context = {"metadata": {"recordUid": "r1"}, "passthrough": {}, "msgOpts": {"x": 1}}
    queue.publish("unused", [message("f1", "s1", "m1", {"n": 7}, context=context)])
    wait_for(lambda: len(replies.of("m1")) == 3, 60, f"3 replies (log: {process.output()[-3000:]})")
    events = replies.of("m1")
    assert [e["type"] for e in events] == [t.STEP_COMPLETED] * 3
    data = [payload(e) for e in events]
    assert [(d["seq"], d["final"]) for d in data] == [(0, False), (1, False), (2, True)]
    assert [d.get("data") for d in data[:2]] == [
        {"n": 7, "i": 1, "tag": "t1", "record": "r1"},
        {"n": 7, "i": 2, "tag": "t1", "record": "r1"},
    ]
    assert data[2]["empty"] is True
    assert {(e["runid"], e["flowid"], e["tenant"]) for e in events} == {("run-1", "f1", "acme")}
    claims = tokens.verify_step_token(KEY, events[0]["steptoken"], SystemClock())
    assert (claims.run_id, claims.step_id) == ("run-1", "s1")
    # the flow token (ferryman's apiKey) is in no event we emit and no line we log
    emitted = json.dumps([{**e.get_attributes(), "data": payload(e)} for e in events])
    assert FLOW_TOKEN not in emitted
    assert FLOW_TOKEN not in caplog.text
    assert replies.backchannel.ignored == {}
    queue.close()


def test_a_throwing_action_fails_the_step_once(
    rabbitmq: RabbitMq, amqp_vhost: str, ferryman: FerrymanLauncher, replies: Replies
) -> None:
    env = deploy_step(rabbitmq, amqp_vhost, "f2", "s1")
    process = ferryman.start(env)
    topology = RabbitMqTopology(amqp_vhost)
    wait_for(lambda: topology.consumers(names.messages_queue("f2", "s1")) == 1, 60, "consumer")
    queue = RabbitMqStepQueue(amqp_vhost, signer("fail"))
    queue.publish("unused", [message("f2", "s1", "m2", {"n": 1}, attempt=3)])
    wait_for(lambda: replies.of("m2"), 60, f"a reply (log: {process.output()[-3000:]})")
    # the end ferryman sends after the error is not a second result
    wait_for(lambda: replies.backchannel.sent >= 1, 10, "sent")
    topology_queue_empty = lambda: _depth(amqp_vhost, names.BACKCHANNEL_QUEUE) == 0  # noqa: E731
    wait_for(topology_queue_empty, 30, "backchannel drained")
    events = replies.of("m2")
    assert [e["type"] for e in events] == [t.STEP_FAILED]
    failed = payload(events[0])
    assert failed["final"] is True and failed["attempt"] == 3
    assert failed["error"].startswith('Error: refused record {"n":1}')
    # ferryman rejected the message (no requeue): the retry is step-execute's, not RabbitMQ's
    assert _depth(amqp_vhost, names.messages_queue("f2", "s1")) == 0
    queue.close()


def _depth(amqp_url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def _publish_reply(amqp_url: str, routing_key: str, headers: dict[str, Any], body: bytes) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        connection.channel().basic_publish(
            names.BACKCHANNEL_EXCHANGE, routing_key, body, pika.BasicProperties(headers=headers)
        )
    finally:
        connection.close()


def ignored_count(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "orchestrator_backchannel_replies_total", {"outcome": "ignored", "reason": reason}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("token", "reason"),
    [(None, "no_token"), ("not-a-jwt", "token_refused"), ("other-key", "token_refused"),
     ("altered", "token_refused")],
    ids=["no token", "not a JWT", "signed with another key", "claims altered after signing"],
)  # fmt: skip
def test_a_forged_reply_is_ignored_and_counted(
    amqp_vhost: str, replies: Replies, token: str | None, reason: str
) -> None:
    before = ignored_count(reason)
    claims = {
        "flowId": "f3", "stepId": "s1", "tenant": "acme", "userId": "u1",
        names.RUN_CLAIM: "run-9", names.MESSAGE_CLAIM: "m9", names.ATTEMPT_CLAIM: 0,
    }  # fmt: skip
    headers: dict[str, Any] = {}
    if token == "not-a-jwt":
        headers[names.TOKEN_HEADER] = "xyz"
    elif token == "other-key":
        headers[names.TOKEN_HEADER] = tokens.sign_orchestrator_token(
            "another-key-0123456789abcdef-0123456", claims, ttl_seconds=600, clock=SystemClock()
        )
    elif token == "altered":
        good = tokens.sign_orchestrator_token(KEY, claims, ttl_seconds=600, clock=SystemClock())
        head, body, signature = good.split(".")
        import base64

        forged = (
            base64.urlsafe_b64encode(
                json.dumps(
                    {**json.loads(base64.urlsafe_b64decode(body + "==")), "runId": "run-x"}
                ).encode()
            )
            .decode()
            .rstrip("=")
        )
        headers[names.TOKEN_HEADER] = f"{head}.{forged}.{signature}"
    _publish_reply(amqp_vhost, names.INPUT_KEY, headers, b'{"data":{"stolen":true}}')
    wait_for(lambda: sum(replies.backchannel.ignored.values()) == 1, 30, "the reply ignored")
    assert replies.events == []
    assert ignored_count(reason) == before + 1  # orchestrator_backchannel_replies, on /metrics


def test_the_backchannel_serves_its_counts_on_metrics() -> None:
    port = serve_metrics(0, "127.0.0.1")
    metrics.observe_backchannel_reply("ignored", "not_json")
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert 'orchestrator_backchannel_replies_total{outcome="ignored",reason="not_json"}' in text
    with pytest.raises(ValueError, match="not ours"):
        metrics.observe_backchannel_reply("ignored", "whatever a component wrote")


def test_a_reply_with_another_runs_token_answers_only_that_run(
    amqp_vhost: str, replies: Replies
) -> None:
    """A component can only echo tokens of messages it was given: whatever it claims in
    headers, the event names the run, message and step of the token it echoes."""
    claims = {
        "flowId": "f3", "stepId": "s1", "tenant": "acme", "userId": "u1",
        names.RUN_CLAIM: "run-A", names.MESSAGE_CLAIM: "mA", names.ATTEMPT_CLAIM: 0,
    }  # fmt: skip
    token = tokens.sign_orchestrator_token(KEY, claims, ttl_seconds=600, clock=SystemClock())
    headers = {names.TOKEN_HEADER: token, "execId": "run-B", "parentMessageId": "mB",
               "stepId": "s2", "taskId": "f4"}  # fmt: skip
    _publish_reply(amqp_vhost, names.INPUT_KEY, headers, b'{"data":{"x":1}}')
    wait_for(lambda: replies.events, 30, "the event")
    data = payload(replies.events[0])
    assert (data["runId"], data["messageId"], data["stepId"]) == ("run-A", "mA", "s1")
    assert replies.events[0]["flowid"] == "f3"


def test_a_flow_user_reads_only_its_own_queues(rabbitmq: RabbitMq, amqp_vhost: str) -> None:
    own = deploy_step(rabbitmq, amqp_vhost, "fa", "s1")
    deploy_step(rabbitmq, amqp_vhost, "fb", "s1")
    connection = pika.BlockingConnection(pika.URLParameters(own[names.AMQP_URI_VARIABLE]))
    try:
        channel = connection.channel()
        channel.basic_get(names.messages_queue("fa", "s1"))  # its own: allowed
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.basic_get(names.messages_queue("fb", "s1"))
        assert refused.value.reply_code == 403
        channel = connection.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.basic_get(names.BACKCHANNEL_QUEUE)  # nobody else's replies either
        assert refused.value.reply_code == 403
        channel = connection.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.queue_declare("mine", durable=True)  # configures nothing
        assert refused.value.reply_code == 403
    finally:
        connection.close()
    assert quote("/") == "/"  # the vhost helper reads %2F as "/"
    assert vhost_of("amqp://u:p@h:1/%2F") == "/"


def test_the_python_worker_cannot_consume_an_amqp_queue() -> None:
    queue = RabbitMqStepQueue("amqp://guest:guest@127.0.0.1:1/%2F", signer("x"))
    with pytest.raises(PermanentError, match="ferryman"):
        queue.receive("q", "c")


@pytest.mark.parametrize(
    ("context", "body"),
    [
        (None, {"data": {"n": 1}, "metadata": {}, "attachments": {}, "passthrough": {}}),
        (
            {"metadata": {"recordUid": "r"}, "attachments": {"a": {}}, "passthrough": {"s0": 1},
             "msgOpts": {"priority": 1}, "method": "POST"},
            {"data": {"n": 1}, "metadata": {"recordUid": "r"}, "attachments": {"a": {}},
             "passthrough": {"s0": 1}, "method": "POST"},
        ),
    ],
    ids=["a later step: its data", "a first step: the run's message beside it, msgOpts ours"],
)  # fmt: skip
def test_the_body_is_ferrymans_message(context: Any, body: dict[str, Any]) -> None:
    assert json.loads(ferryman_body(message("f", "s", "m", {"n": 1}, context=context))) == body


def test_a_message_for_a_flow_not_deployed_is_not_lost(amqp_vhost: str) -> None:
    """No queue takes it (mandatory): the publish fails and is retried by step-execute."""
    RabbitMqTopology(amqp_vhost).ensure_flow("f5", ["s1"])
    queue = RabbitMqStepQueue(amqp_vhost, signer("emitTwo"))
    try:
        with pytest.raises(TemporaryError, match="unroutable"):
            queue.publish("", [message("f5", "s1", "ok", {}), message("f5", "nowhere", "x", {})])
        queue.publish("", [message("f5", "s1", "m6", {})])  # the channel is still good
        assert _depth(amqp_vhost, names.messages_queue("f5", "s1")) == 2
    finally:
        queue.close()
