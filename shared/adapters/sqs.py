"""Step queues on Amazon SQS (QUEUE_BACKEND=sqs), with S3 claim-checks for big bodies.

One standard queue per step (created on first use; the name is the step queue's name made
SQS-safe, with a digest suffix so two names never collide). Messages carry run, step, tenant
and message id as message attributes. A body over the queue's own `MaximumMessageSize`
(attributes included; read from the queue once: up to 1 MiB on SQS today, 256 KiB on older
queues) goes to `CLAIM_CHECK_BUCKET` and the message carries a pointer; the object is deleted
once the message is acknowledged. SQS redelivers unacknowledged messages itself after the visibility
timeout, so `reclaim` has nothing to do. `AWS_ENDPOINT_URL` points tests at the moto server.
botocore errors become TemporaryError (throttling, 5xx, connection) or PermanentError.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from shared.errors import PermanentError, TemporaryError
from shared.ports.queue_access import claim_check_prefix, sqs_name
from shared.ports.step_message import BadMessage, Delivery, StepMessage

__all__ = ["SqsQueue", "aws_errors", "sqs_name"]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024  # when a queue does not say (the old, smallest SQS limit)
BATCH_SIZE = 10  # SQS batch limit (entries)
VISIBILITY_TIMEOUT_SECONDS = 300
CLAIM_CHECK_FIELD = "claimCheck"
_TEMPORARY_CODES = frozenset(
    {
        "Throttling", "ThrottlingException", "RequestThrottled", "SlowDown",
        "ServiceUnavailable", "InternalError", "InternalFailure", "RequestTimeout",
        "RequestTimeoutException", "KmsThrottled",
    }
)  # fmt: skip


@contextmanager
def aws_errors(operation: str) -> Iterator[None]:
    """The one place botocore's errors become ours (never with credentials in the message)."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _TEMPORARY_CODES or status >= 500 or status == 429:
            raise TemporaryError(f"AWS {operation} failed: {code or status}") from exc
        raise PermanentError(f"AWS {operation} refused: {code or status}") from exc
    except NoCredentialsError as exc:
        raise PermanentError(f"AWS {operation}: no credentials configured") from exc
    except BotoCoreError as exc:
        raise TemporaryError(f"AWS {operation} unreachable: {type(exc).__name__}") from exc


def _attribute_bytes(attributes: dict[str, Any]) -> int:
    return sum(
        len(name.encode()) + len(value["DataType"]) + len(str(value["StringValue"]).encode())
        for name, value in attributes.items()
    )


class SqsQueue:
    def __init__(
        self,
        sqs: Any,
        s3: Any,
        bucket: str,
        *,
        visibility_timeout: int = VISIBILITY_TIMEOUT_SECONDS,
        max_message_bytes: int | None = None,
        create_queues: bool = True,
    ) -> None:
        self.sqs = sqs
        # A worker does not create queues (its IAM policy allows none): a queue not there yet
        # is an empty receive, looked up again on the next poll (step-execute creates it).
        self.create_queues = create_queues
        self.s3 = s3
        self.bucket = bucket
        self.visibility_timeout = visibility_timeout
        # None: each queue's own MaximumMessageSize (SQS allows up to 1 MiB; queues created
        # before 2025 and some emulators default to 256 KiB), read once per queue.
        self.max_message_bytes = max_message_bytes
        self._urls: dict[str, str] = {}
        self._limits: dict[str, int] = {}

    @classmethod
    def connect(
        cls, *, endpoint_url: str | None, bucket: str, create_queues: bool = True
    ) -> SqsQueue:
        session = boto3.session.Session()
        region = session.region_name or "us-east-1"
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                        read_timeout=30)  # fmt: skip
        return cls(
            session.client("sqs", endpoint_url=endpoint_url, region_name=region, config=config),
            session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config),
            bucket,
            create_queues=create_queues,
        )

    def queue_url(self, queue: str) -> str | None:
        """None only without `create_queues`, for a queue that does not exist yet."""
        url = self._urls.get(queue)
        if url is None:
            url = self._existing_url(queue)
            if url is None and not self.create_queues:
                return None
            url = url or self._create(queue)
            self._urls[queue] = url
        return url

    def _url(self, queue: str) -> str:
        url = self.queue_url(queue)
        if url is None:
            raise TemporaryError(f"SQS queue {sqs_name(queue)} does not exist yet")
        return url

    def _existing_url(self, queue: str) -> str | None:
        """An existing queue is used as it is: CreateQueue would refuse one whose attributes
        (say an operator's MaximumMessageSize) differ from ours."""
        try:
            return str(self.sqs.get_queue_url(QueueName=sqs_name(queue))["QueueUrl"])
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if "NonExistentQueue" not in code and "QueueDoesNotExist" not in code:
                with aws_errors("GetQueueUrl"):
                    raise
            return None
        except BotoCoreError:
            with aws_errors("GetQueueUrl"):
                raise

    def _create(self, queue: str) -> str:
        with aws_errors("CreateQueue"):
            # CreateQueue returns the existing queue when the attributes match (a race).
            return str(
                self.sqs.create_queue(
                    QueueName=sqs_name(queue),
                    Attributes={"VisibilityTimeout": str(self.visibility_timeout)},
                )["QueueUrl"]
            )

    def message_limit(self, queue: str) -> int:
        """Bytes one message (body + attributes) may have on this queue."""
        if self.max_message_bytes is not None:
            return self.max_message_bytes
        limit = self._limits.get(queue)
        if limit is None:
            url = self._url(queue)
            with aws_errors("GetQueueAttributes"):
                answer = self.sqs.get_queue_attributes(
                    QueueUrl=url, AttributeNames=["MaximumMessageSize"]
                )
            raw = answer.get("Attributes", {}).get("MaximumMessageSize")
            limit = int(raw) if raw and str(raw).isdigit() else MAX_MESSAGE_BYTES
            self._limits[queue] = limit
        return limit

    # --- publishing -----------------------------------------------------------------------
    def _entry(self, index: int, message: StepMessage, limit: int) -> dict[str, Any]:
        attributes = {
            name: {"DataType": "String", "StringValue": value}
            for name, value in (
                ("run", message.run_id),
                ("step", message.step_id),
                ("tenant", message.tenant or "-"),
                ("messageId", message.message_id),
            )
        }
        body = message.to_json()
        if len(body.encode()) + _attribute_bytes(attributes) > limit:
            body = self._check_in(message, body)
        return {"Id": str(index), "MessageBody": body, "MessageAttributes": attributes}

    def _check_in(self, message: StepMessage, body: str) -> str:
        key = (
            f"{claim_check_prefix(message.flow_id)}{message.step_id}/"
            f"{message.message_id}-{message.attempt}.json"
        )
        with aws_errors("S3 PutObject"):
            self.s3.put_object(
                Bucket=self.bucket, Key=key, Body=body.encode(), ContentType="application/json"
            )
        return json.dumps({CLAIM_CHECK_FIELD: {"bucket": self.bucket, "key": key}})

    def publish(self, queue: str, messages: Sequence[StepMessage]) -> None:
        if not messages:
            return
        url = self._url(queue)
        limit = self.message_limit(queue)
        entries = [self._entry(i, m, limit) for i, m in enumerate(messages)]
        batch: list[dict[str, Any]] = []
        size = 0
        for entry in entries:
            entry_size = len(entry["MessageBody"].encode()) + _attribute_bytes(
                entry["MessageAttributes"]
            )
            if batch and (len(batch) == BATCH_SIZE or size + entry_size > limit):
                self._send(url, batch)
                batch, size = [], 0
            batch.append(entry)
            size += entry_size
        self._send(url, batch)

    def _send(self, url: str, batch: list[dict[str, Any]]) -> None:
        if not batch:
            return
        with aws_errors("SendMessageBatch"):
            reply = self.sqs.send_message_batch(QueueUrl=url, Entries=batch)
        failed = reply.get("Failed") or []
        if failed:
            codes = sorted({str(f.get("Code")) for f in failed})
            if any(f.get("SenderFault") for f in failed):
                raise PermanentError(f"SQS refused {len(failed)} message(s): {', '.join(codes)}")
            raise TemporaryError(f"SQS failed {len(failed)} message(s): {', '.join(codes)}")

    # --- consuming ------------------------------------------------------------------------
    def receive(
        self, queue: str, consumer: str, *, max_messages: int = 10, wait_seconds: float = 1.0
    ) -> list[Delivery]:
        url = self.queue_url(queue)
        if url is None:
            time.sleep(max(0.0, min(20.0, wait_seconds)))  # a long poll's wait, not a spin
            return []
        with aws_errors("ReceiveMessage"):
            reply = self.sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=max(1, min(BATCH_SIZE, max_messages)),
                WaitTimeSeconds=max(0, min(20, int(wait_seconds))),
                MessageAttributeNames=["All"],
            )
        return [self._delivery(raw) for raw in reply.get("Messages") or []]

    def _delivery(self, raw: dict[str, Any]) -> Delivery:
        receipt = str(raw["ReceiptHandle"])
        body = str(raw.get("Body", ""))
        claim: str | None = None
        try:
            pointer = json.loads(body).get(CLAIM_CHECK_FIELD)
        except (ValueError, AttributeError):
            pointer = None
        try:
            if isinstance(pointer, dict):
                claim = str(pointer["key"])
                with aws_errors("S3 GetObject"):
                    obj = self.s3.get_object(Bucket=str(pointer["bucket"]), Key=claim)
                    body = obj["Body"].read().decode()
            return Delivery(StepMessage.from_json(body), receipt, claim)
        except (BadMessage, PermanentError, KeyError) as exc:
            log.warning("unreadable SQS message: %s", exc)
            return Delivery(None, receipt, claim)

    def ack(self, queue: str, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        url = self._url(queue)
        for start in range(0, len(deliveries), BATCH_SIZE):
            chunk = deliveries[start : start + BATCH_SIZE]
            with aws_errors("DeleteMessageBatch"):
                self.sqs.delete_message_batch(
                    QueueUrl=url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": d.receipt} for i, d in enumerate(chunk)
                    ],
                )
        for delivery in deliveries:
            if delivery.claim_check:
                with aws_errors("S3 DeleteObject"):
                    self.s3.delete_object(Bucket=self.bucket, Key=delivery.claim_check)

    def reclaim(self, queue: str, *, min_idle_seconds: float) -> int:
        return 0  # SQS makes unacknowledged messages visible again after the visibility timeout

    def drop(self, queue: str) -> None:
        # Kept: a deleted SQS queue's name is blocked for 60 s, and step-execute ignores
        # messages of ended runs anyway.
        return None
