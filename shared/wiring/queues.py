"""The step queue backend QUEUE_BACKEND names: one port (shared.ports.queue), two adapters.

- `redis` (default): Redis Streams, shared/adapters/redis_streams.py;
- `sqs`: Amazon SQS with S3 claim-checks for bodies over 256 KiB, shared/adapters/sqs.py.
"""

from __future__ import annotations

from redis import Redis

from shared.ports.queue import StepQueue


def make_queue(
    backend: str,
    *,
    redis: Redis | None = None,
    aws_endpoint_url: str | None = None,
    claim_check_bucket: str | None = None,
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

        return SqsQueue.connect(endpoint_url=aws_endpoint_url, bucket=claim_check_bucket)
    raise ValueError(f"QUEUE_BACKEND: must be redis or sqs, got {backend!r}")
