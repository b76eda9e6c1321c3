"""The AWS IAM policy of one flow's workers on the SQS backend (IRSA): pure functions.

With QUEUE_BACKEND=sqs a worker gets no AWS credentials from us (none in its Secret, none from
the local driver's environment). In a cluster its pods run under the flow's own Kubernetes
ServiceAccount, which IRSA (EKS: the `eks.amazonaws.com/role-arn` annotation) maps to an IAM
role of that flow alone, with the policy `worker_policy` writes: receive and delete on exactly
the flow's step queues (their ARNs, never a name prefix another flow could share), read and
delete under exactly the flow's claim-check prefix, nothing else (docs/security.md, "IRSA").
`trust_policy` lets only that ServiceAccount assume the role.

What a worker sends (shared/adapters/sqs.py with create_queues=False): GetQueueUrl,
ReceiveMessage, DeleteMessageBatch (authorized as sqs:DeleteMessage); S3 GetObject and
DeleteObject of the claim checks of its messages. It publishes nothing to SQS (its outputs go
to the Broker as events) and creates no queue.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from shared.clock import Clock, SystemClock
from shared.ports.queue_access import WorkerRoles, claim_check_prefix, sqs_name

POLICY_VERSION = "2012-10-17"
WORKER_SQS_ACTIONS: tuple[str, ...] = ("sqs:GetQueueUrl", "sqs:ReceiveMessage", "sqs:DeleteMessage")
WORKER_S3_ACTIONS: tuple[str, ...] = ("s3:GetObject", "s3:DeleteObject")
ROLE_PREFIX = "co-flow-"
_ACCOUNT = re.compile(r"\d{12}")


def role_name(flow_id: str) -> str:
    """The flow's IAM role (and ServiceAccount) name: a digest of the exact id, so any id fits
    IAM's 64 characters and DNS-1123 alike, and two flows never share one."""
    return ROLE_PREFIX + hashlib.sha256(flow_id.encode()).hexdigest()[:32]


def queue_arn(queue: str, *, region: str, account_id: str, partition: str = "aws") -> str:
    return f"arn:{partition}:sqs:{region}:{account_id}:{sqs_name(queue)}"


def worker_policy(
    flow_id: str,
    queues: Sequence[str],
    *,
    region: str,
    account_id: str,
    bucket: str,
    partition: str = "aws",
) -> dict[str, Any]:
    """The identity policy of the flow's role: its queues and its claim-check prefix only."""
    if not _ACCOUNT.fullmatch(account_id):
        raise ValueError(f"account_id: 12 digits, got {account_id!r}")
    if not queues:
        raise ValueError("queues: a flow's workers read at least one queue")
    arns = sorted({queue_arn(q, region=region, account_id=account_id, partition=partition)
                   for q in queues})  # fmt: skip
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {
                "Sid": "StepQueuesOfThisFlow",
                "Effect": "Allow",
                "Action": list(WORKER_SQS_ACTIONS),
                "Resource": arns,
            },
            {
                "Sid": "ClaimChecksOfThisFlow",
                "Effect": "Allow",
                "Action": list(WORKER_S3_ACTIONS),
                "Resource": [f"arn:{partition}:s3:::{bucket}/{claim_check_prefix(flow_id)}*"],
            },
        ],
    }


def trust_policy(
    flow_id: str,
    *,
    account_id: str,
    oidc_issuer: str,
    namespace: str,
    partition: str = "aws",
) -> dict[str, Any]:
    """Who may assume the flow's role: the flow's ServiceAccount through the cluster's OIDC
    provider (IRSA), for STS, nobody else."""
    issuer = re.sub(r"^https://", "", oidc_issuer).rstrip("/")
    subject = f"system:serviceaccount:{namespace}:{role_name(flow_id)}"
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {
                    "Federated": f"arn:{partition}:iam::{account_id}:oidc-provider/{issuer}"
                },
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {f"{issuer}:sub": subject, f"{issuer}:aud": "sts.amazonaws.com"}
                },
            }
        ],
    }


_ROLE_PREFIX = re.compile(
    r"arn:(?P<partition>[a-z-]+):iam::(?P<account>\d{12}):role(?P<path>/(?:[\w+=,.@-]+/)*)"
)


def parse_role_prefix(prefix: str) -> tuple[str, str, str]:
    """(partition, account, path) of `arn:<partition>:iam::<account>:role/[path/]`."""
    match = _ROLE_PREFIX.fullmatch(prefix)
    if match is None:
        raise ValueError(
            f"WORKER_IAM_ROLE_PREFIX: must be arn:<partition>:iam::<account>:role/[path/], "
            f"got {prefix!r}"
        )
    return match["partition"], match["account"], match["path"]


class IrsaRoles:
    """The flows' queue credentials on SQS when deploy creates the IRSA roles itself
    (WORKER_IAM_OIDC_ISSUER set): `grant` writes the flow's role with `worker_policy` and
    `trust_policy`, `revoke` deletes it. No password, nothing in the Secret; the generation
    stays 0 (a role is updated in place, it never needs rotating). Reconcile grants on every
    pass; IAM is written only when the documents changed or `REWRITE_SECONDS` passed (IAM's
    API is rate-limited, and a role changed by hand is put right within that time)."""

    REWRITE_SECONDS = 600.0

    def __init__(
        self,
        roles: WorkerRoles,
        *,
        role_prefix: str,
        oidc_issuer: str,
        namespace: str,
        bucket: str,
        boundary: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._roles, self._issuer, self._namespace = roles, oidc_issuer, namespace
        self._clock = clock or SystemClock()
        self._written: dict[str, tuple[str, float]] = {}  # role → (documents' digest, when)
        self._partition, self._account, self._path = parse_role_prefix(role_prefix)
        self._bucket, self._boundary = bucket, boundary

    def generation(self, flow_id: str) -> int | None:
        return 0

    def rotate(self, flow_id: str) -> int | None:
        return 0

    def grant(self, flow_id: str, queues: Sequence[str], generation: int) -> dict[str, str]:
        name = role_name(flow_id)
        trust = trust_policy(
            flow_id,
            account_id=self._account,
            oidc_issuer=self._issuer,
            namespace=self._namespace,
            partition=self._partition,
        )
        policy = worker_policy(
            flow_id,
            queues,
            region="*",
            account_id=self._account,
            bucket=self._bucket,
            partition=self._partition,
        )
        digest = hashlib.sha256(json.dumps([trust, policy], sort_keys=True).encode()).hexdigest()
        now = self._clock.now()
        last = self._written.get(name)
        if last is not None and last[0] == digest and now - last[1] < self.REWRITE_SECONDS:
            return {}
        self._roles.ensure(
            name, path=self._path, trust_policy=trust, policy=policy, boundary=self._boundary
        )
        self._written[name] = (digest, now)
        return {}

    def revoke(self, flow_id: str) -> None:
        self._roles.delete(role_name(flow_id))
        self._written.pop(role_name(flow_id), None)

    def consumers(self, flow_id: str, step_id: str) -> int | None:
        return None  # SQS does not say who consumes
