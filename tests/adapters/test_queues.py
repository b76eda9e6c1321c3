"""Queue backends behind one interface: Redis Streams (real Redis) and SQS + S3 (real moto)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.adapters.redis_streams import FIELD, RedisStreamsQueue
from shared.adapters.sqs import MAX_MESSAGE_BYTES, SqsQueue, sqs_name
from shared.errors import PermanentError, TemporaryError
from shared.execution.routing import encode
from shared.ports.queue import StepQueue
from shared.ports.step_message import Delivery, StepMessage
from shared.wiring.queues import make_queue
from tests.fakes.aws import Aws

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster

QUEUE = "co:q:{flow-1}:step-a"


def message(n: int, data: object = None, *, step: str = "step-a") -> StepMessage:
    return StepMessage(
        run_id="run-1",
        flow_id="flow-1",
        step_id=step,
        message_id=f"m-{n}",
        tenant="acme",
        attempt=0,
        data_json=encode({"n": n} if data is None else data),
        token="tok",
    )


@pytest.fixture(params=["redis", "sqs"])
def queue(request: pytest.FixtureRequest) -> Iterator[StepQueue]:
    if request.param == "redis":
        yield RedisStreamsQueue(request.getfixturevalue("redis"))
    else:
        aws: Aws = request.getfixturevalue("aws")
        yield SqsQueue(aws.sqs, aws.s3, aws.bucket, visibility_timeout=60)


def drain(queue: StepQueue, consumer: str = "c1") -> list[Delivery]:
    got: list[Delivery] = []
    while batch := queue.receive(QUEUE, consumer, max_messages=10, wait_seconds=0):
        got += batch
    return got


def messages_of(deliveries: list[Delivery]) -> list[StepMessage]:
    """The deliveries' messages; every delivery must carry one."""
    messages = [d.message for d in deliveries]
    assert all(m is not None for m in messages)
    return [m for m in messages if m is not None]


def test_published_messages_are_received_intact_and_gone_once_acknowledged(
    queue: StepQueue,
) -> None:
    sent = [message(n, {"n": n, "text": "héllo", "list": [1.5, None]}) for n in range(25)]
    queue.publish(QUEUE, sent)
    got = drain(queue)
    assert sorted(messages_of(got), key=lambda m: m.message_id) == sorted(
        sent, key=lambda m: m.message_id
    )
    assert got[0].message is not None and got[0].message.data["text"] == "héllo"
    queue.ack(QUEUE, got)
    assert drain(queue) == []


def test_consumers_of_one_step_share_its_messages_without_duplicates(queue: StepQueue) -> None:
    queue.publish(QUEUE, [message(n) for n in range(20)])
    first = queue.receive(QUEUE, "replica-1", max_messages=10, wait_seconds=0)
    second = drain(queue, "replica-2")
    ids = [d.message.message_id for d in first + second if d.message]
    assert sorted(ids) == sorted(f"m-{n}" for n in range(20))


def test_redis_reclaim_hands_unacknowledged_entries_to_another_consumer(redis: Redis) -> None:
    queue = RedisStreamsQueue(redis)
    queue.publish(QUEUE, [message(1), message(2)])
    crashed = queue.receive(QUEUE, "crashed", wait_seconds=0)
    assert len(crashed) == 2
    assert queue.receive(QUEUE, "other", wait_seconds=0) == []

    assert queue.reclaim(QUEUE, min_idle_seconds=3600) == 0  # not idle long enough
    assert queue.reclaim(QUEUE, min_idle_seconds=0) == 2
    again = queue.receive(QUEUE, "other", wait_seconds=0)
    assert sorted(d.message.message_id for d in again if d.message) == ["m-1", "m-2"]
    queue.ack(QUEUE, again)
    assert queue.depth(QUEUE) == 0
    assert redis.xpending(QUEUE, "workers")["pending"] == 0


def test_redis_streams_are_capped(redis: Redis) -> None:
    queue = RedisStreamsQueue(redis, maxlen=100)
    for start in range(0, 1000, 100):
        queue.publish(QUEUE, [message(n) for n in range(start, start + 100)])
    assert queue.depth(QUEUE) < 300  # approximate trimming keeps it near the cap


def test_a_redis_stream_published_before_its_worker_starts_is_read_from_the_start(
    redis: Redis,
) -> None:
    RedisStreamsQueue(redis).publish(QUEUE, [message(1)])
    worker_side = RedisStreamsQueue(redis)  # another process
    assert [d.message.message_id for d in drain(worker_side) if d.message] == ["m-1"]


def test_a_dropped_redis_stream_is_recreated_for_new_messages(redis: Redis) -> None:
    publisher, other_publisher, worker = (RedisStreamsQueue(redis) for _ in range(3))
    publisher.publish(QUEUE, [message(1)])
    other_publisher.publish(QUEUE, [message(2)])
    assert len(drain(worker)) == 2
    publisher.drop(QUEUE)
    publisher.publish(QUEUE, [message(3)])  # knows it dropped the stream: group made again
    assert [d.message.message_id for d in drain(worker) if d.message] == ["m-3"]
    publisher.drop(QUEUE)
    other_publisher.publish(QUEUE, [message(4)])  # does not know: the stream has no group
    assert worker.receive(QUEUE, "c1", wait_seconds=0) == []  # NOGROUP: the worker makes it
    assert [d.message.message_id for d in drain(worker) if d.message] == ["m-4"]


def test_an_unreadable_redis_entry_is_delivered_as_empty_for_the_worker_to_drop(
    redis: Redis,
) -> None:
    queue = RedisStreamsQueue(redis)
    queue.ensure_group(QUEUE)
    redis.xadd(QUEUE, {FIELD: b"not json"})
    redis.xadd(QUEUE, {b"other": b"x"})
    got = drain(queue)
    assert [d.message for d in got] == [None, None]
    queue.ack(QUEUE, got)
    assert queue.depth(QUEUE) == 0


def test_redis_errors_become_temporary_errors() -> None:
    down = Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    queue = RedisStreamsQueue(down)
    with pytest.raises(TemporaryError):
        queue.publish(QUEUE, [message(1)])


# --- SQS + S3 -------------------------------------------------------------------------------
def test_sqs_messages_carry_run_step_and_tenant_attributes(aws: Aws) -> None:
    queue = SqsQueue(aws.sqs, aws.s3, aws.bucket)
    queue.publish(QUEUE, [message(1)])
    url = queue.queue_url(QUEUE)
    assert url is not None
    raw = aws.sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"])["Messages"][0]
    attributes = {k: v["StringValue"] for k, v in raw["MessageAttributes"].items()}
    assert attributes == {"run": "run-1", "step": "step-a", "tenant": "acme", "messageId": "m-1"}
    assert url.endswith(sqs_name(QUEUE))


def test_an_sqs_body_over_256_kib_travels_through_s3_and_is_deleted_after_consumption(
    aws: Aws,
) -> None:
    # a queue created before SQS raised its limit to 1 MiB
    aws.sqs.create_queue(QueueName=sqs_name(QUEUE), Attributes={"MaximumMessageSize": "262144"})
    queue = SqsQueue(aws.sqs, aws.s3, aws.bucket)
    big = {"blob": "x" * (300 * 1024)}
    queue.publish(QUEUE, [message(1, big), message(2)])
    assert len(aws.objects()) == 1  # only the big one was checked in

    got = drain(queue)
    by_id = {d.message.message_id: d for d in got if d.message}
    assert by_id["m-1"].message is not None and by_id["m-1"].message.data == big
    assert by_id["m-1"].claim_check is not None and by_id["m-2"].claim_check is None
    queue.ack(QUEUE, got)
    assert aws.objects() == []
    assert drain(queue) == []


def test_an_sqs_body_just_under_the_limit_stays_inline(aws: Aws) -> None:
    queue = SqsQueue(aws.sqs, aws.s3, aws.bucket)
    queue.publish(QUEUE, [message(1, {"blob": "x" * (MAX_MESSAGE_BYTES - 1024)})])
    assert aws.objects() == []
    (delivery,) = drain(queue)
    assert delivery.claim_check is None


@pytest.mark.parametrize(
    ("queue_limit", "body_kib", "checked_in"),
    [
        (1024, 2, True),  # a queue that allows 1 KiB: a 2 KiB body goes through S3
        (1024 * 1024, 300, False),  # SQS's 1 MiB: 300 KiB stays inline
        (1024 * 1024, 1100, True),
        (None, 300, False),  # a queue we create: SQS's (and moto's) default, 1 MiB
        (None, 1100, True),
    ],
    ids=["1KiB-queue", "1MiB-queue-300KiB", "1MiB-queue-1100KiB", "new-300KiB", "new-1100KiB"],
)
def test_the_claim_check_threshold_is_the_queues_own_maximum_message_size(
    aws: Aws, queue_limit: int | None, body_kib: int, checked_in: bool
) -> None:
    if queue_limit is not None:  # the queue exists already, made by an operator
        aws.sqs.create_queue(
            QueueName=sqs_name(QUEUE), Attributes={"MaximumMessageSize": str(queue_limit)}
        )
    queue = SqsQueue(aws.sqs, aws.s3, aws.bucket)
    queue.publish(QUEUE, [message(1, {"blob": "x" * (body_kib * 1024)})])
    assert (len(aws.objects()) == 1) is checked_in
    (delivery,) = drain(queue)
    assert (delivery.claim_check is not None) is checked_in
    assert delivery.message is not None and len(delivery.message.data["blob"]) == body_kib * 1024


def test_sqs_errors_are_ours(aws: Aws) -> None:
    missing_bucket = SqsQueue(aws.sqs, aws.s3, "no-such-bucket")
    with pytest.raises(PermanentError):
        missing_bucket.publish(QUEUE, [message(1, {"blob": "x" * (1100 * 1024)})])
    unreachable = SqsQueue.connect(endpoint_url="http://127.0.0.1:1", bucket="b")
    with pytest.raises(TemporaryError):
        unreachable.publish(QUEUE, [message(1)])


def test_make_queue_picks_the_backend_explicitly(redis: Redis, aws: Aws) -> None:
    assert isinstance(make_queue("redis", redis=redis), RedisStreamsQueue)
    sqs = make_queue("sqs", aws_endpoint_url=aws.endpoint_url, claim_check_bucket=aws.bucket)
    assert isinstance(sqs, SqsQueue)
    sqs.publish(QUEUE, [message(1)])
    assert len(drain(sqs)) == 1
    bad_choices: tuple[Callable[[], object], ...] = (
        lambda: make_queue("redis"),
        lambda: make_queue("sqs"),
        lambda: make_queue("kafka", redis=redis),
    )
    for bad in bad_choices:
        with pytest.raises(ValueError):
            bad()


def test_a_step_message_never_shows_its_token() -> None:
    assert "tok" not in repr(message(1))
    assert StepMessage.from_json(message(1).to_json()) == message(1)
