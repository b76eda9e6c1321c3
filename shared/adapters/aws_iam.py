"""The workers' IAM roles on AWS (SQS with IRSA): one role per flow, written by deploy.

`ensure` creates the role (with the permissions boundary, when one is set, so deploy's own
`iam:CreateRole` can be limited to roles that carry it) or updates its trust policy, then puts
the one inline policy `step-queues` (shared/deployment/queue_policy.py wrote both documents).
`delete` removes the inline policy and the role. botocore's errors become ours
(`shared.adapters.sqs.aws_errors`).
"""

from __future__ import annotations

import json
from typing import Any

import boto3
from botocore.exceptions import ClientError

from shared.adapters.sqs import aws_errors

POLICY_NAME = "step-queues"


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) == "NoSuchEntity"


class AwsWorkerRoles:
    def __init__(self, iam: Any) -> None:
        self.iam = iam

    @classmethod
    def connect(cls, *, endpoint_url: str | None = None) -> AwsWorkerRoles:
        return cls(boto3.session.Session().client("iam", endpoint_url=endpoint_url))

    def ensure(
        self,
        name: str,
        *,
        path: str,
        trust_policy: dict[str, Any],
        policy: dict[str, Any],
        boundary: str | None,
    ) -> None:
        trust = json.dumps(trust_policy, sort_keys=True)
        try:
            self.iam.get_role(RoleName=name)
            exists = True
        except ClientError as exc:
            if not _missing(exc):
                with aws_errors("IAM GetRole"):
                    raise
            exists = False
        if exists:
            with aws_errors("IAM UpdateAssumeRolePolicy"):
                self.iam.update_assume_role_policy(RoleName=name, PolicyDocument=trust)
        else:
            extra = {"PermissionsBoundary": boundary} if boundary else {}
            with aws_errors("IAM CreateRole"):
                self.iam.create_role(
                    RoleName=name,
                    Path=path,
                    AssumeRolePolicyDocument=trust,
                    Description="component-orchestrator: one flow's step workers",
                    Tags=[{"Key": "managed-by", "Value": "component-orchestrator"}],
                    **extra,
                )
        with aws_errors("IAM PutRolePolicy"):
            self.iam.put_role_policy(
                RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy)
            )

    def delete(self, name: str) -> None:
        for operation, method, arguments in (
            ("IAM DeleteRolePolicy", "delete_role_policy", {"PolicyName": POLICY_NAME}),
            ("IAM DeleteRole", "delete_role", {}),
        ):
            try:
                getattr(self.iam, method)(RoleName=name, **arguments)
            except ClientError as exc:
                if not _missing(exc):
                    with aws_errors(operation):
                        raise
