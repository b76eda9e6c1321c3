"""The step queue backend QUEUE_BACKEND names: one port (shared.ports.queue), three adapters.

- `redis` (default): Redis Streams, shared/adapters/redis_streams.py;
- `sqs`: Amazon SQS with S3 claim-checks for bodies over 256 KiB, shared/adapters/sqs.py;
- `amqp`: RabbitMQ in ferryman's format, for existing OIH connector images
  (shared/adapters/rabbitmq.py; each message signed by shared/execution/ferryman.py).
"""

from __future__ import annotations

from redis import Redis

from shared.clock import Clock
from shared.ports.queue import StepQueue
from shared.ports.step_message import StepMessage
from shared.settings import Settings


def make_queue(
    backend: str,
    *,
    redis: Redis | None = None,
    aws_endpoint_url: str | None = None,
    claim_check_bucket: str | None = None,
    worker: bool = False,
) -> StepQueue:
    """The backend named by QUEUE_BACKEND, explicitly: no fallback from one to the other."""
    if backend == "redis":
        if redis is None:
            raise ValueError("QUEUE_BACKEND=redis needs a Redis client (REDIS_URL)")
        from shared.adapters.redis_streams import RedisStreamsQueue

        return RedisStreamsQueue(redis)
    if backend == "sqs":
        if not claim_check_bucket:
            raise ValueError("CLAIM_CHECK_BUCKET: required when QUEUE_BACKEND=sqs")
        from shared.adapters.sqs import SqsQueue

        # A worker's IAM policy allows its own queues' receive and delete only: it creates none.
        return SqsQueue.connect(
            endpoint_url=aws_endpoint_url, bucket=claim_check_bucket, create_queues=not worker
        )
    if backend == "amqp":
        raise ValueError("QUEUE_BACKEND=amqp: step-execute's queue (make_step_queue); "
                         "its workers are ferryman, not python -m shared.worker")  # fmt: skip
    raise ValueError(f"QUEUE_BACKEND: must be redis, sqs or amqp, got {backend!r}")


def make_step_queue(settings: Settings, redis: Redis, clock: Clock) -> StepQueue:
    """The queue step-execute publishes to."""
    if settings.queue_backend != "amqp":
        return make_queue(
            settings.queue_backend,
            redis=redis,
            aws_endpoint_url=settings.aws_endpoint_url,
            claim_check_bucket=settings.claim_check_bucket,
        )
    from shared.adapters.rabbitmq import RabbitMqStepQueue, SignedMessage
    from shared.deployment.flow_tokens import stored_flow_token
    from shared.execution.ferryman import FerrymanTokens
    from shared.model.policy import load_policy

    signer = FerrymanTokens(
        redis,
        clock,
        settings.orchestrator_key,
        lambda flow_id: stored_flow_token(redis, flow_id, key=settings.orchestrator_key),
        load_policy(settings.policy_file),
    )

    def sign(message: StepMessage) -> SignedMessage:
        token, user = signer.sign(message)
        return SignedMessage(token=token, user_id=user)

    return RabbitMqStepQueue(settings.amqp_url or "", sign)
