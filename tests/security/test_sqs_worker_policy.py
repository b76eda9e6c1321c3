"""Attack: on the SQS backend a hostile component image uses its AWS credentials on another
flow's queue and claim checks.

The policy of a flow's IRSA role is generated in code (shared/deployment/queue_policy.py); its
content is checked here, and then enforced by a real moto server that runs with IAM checks on
(`INITIAL_NO_AUTH_ACTION_COUNT`): an IAM user carrying flow A's generated policy stands in for
A's role, and the worker's own queue adapter is used with its credentials."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from redis import Redis

from shared import keys
from shared.adapters.aws_iam import AwsWorkerRoles
from shared.adapters.sqs import SqsQueue
from shared.clock import FakeClock
from shared.deployment.desired_state import (
    FLOW_ID_ANNOTATION,
    IAM_POLICY_ANNOTATION,
    IRSA_ROLE_ANNOTATION,
)
from shared.deployment.queue_policy import (
    WORKER_S3_ACTIONS,
    WORKER_SQS_ACTIONS,
    IrsaRoles,
    role_name,
    trust_policy,
    worker_policy,
)
from shared.deployment.worker_settings import WorkerSettings
from shared.errors import PermanentError
from shared.local.embedded_redis import free_port
from shared.ports.queue_access import claim_check_prefix, sqs_name
from shared.ports.step_message import StepMessage
from tests.deploy_harness import DeployHarness, flow_doc, step
from tests.fakes.aws import Aws
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.kube_api import FakeKubeApi

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account
BUCKET = "claim-checks"


def queues(flow_id: str) -> list[str]:
    return [keys.step_queue(flow_id, "a"), keys.step_queue(flow_id, "b")]


def policy(flow_id: str) -> dict[str, Any]:
    return worker_policy(flow_id, queues(flow_id), region=REGION, account_id=ACCOUNT, bucket=BUCKET)


def test_the_policy_names_exactly_the_flows_queues_and_claim_check_prefix() -> None:
    document = policy("flow-a")
    sqs_statement, s3_statement = document["Statement"]
    assert document["Version"] == "2012-10-17"
    assert all(s["Effect"] == "Allow" for s in document["Statement"])
    assert sqs_statement["Action"] == list(WORKER_SQS_ACTIONS)
    assert set(WORKER_SQS_ACTIONS) == {"sqs:GetQueueUrl", "sqs:ReceiveMessage", "sqs:DeleteMessage"}
    assert sqs_statement["Resource"] == sorted(
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:{sqs_name(q)}" for q in queues("flow-a")
    )
    assert s3_statement["Action"] == list(WORKER_S3_ACTIONS) == ["s3:GetObject", "s3:DeleteObject"]
    assert s3_statement["Resource"] == [f"arn:aws:s3:::{BUCKET}/claim-check/flow-a/*"]
    text = json.dumps(document)
    for wide in ('"*"', "sqs:*", "s3:*", "SendMessage", "CreateQueue", "ListQueues", "iam:"):
        assert wide not in text, wide
    # A flow whose id starts with another's shares nothing with it (exact ARNs, `/` ends ids).
    other = json.dumps(policy("flow-ab"))
    assert not set(sqs_statement["Resource"]) & set(policy("flow-ab")["Statement"][0]["Resource"])
    assert "claim-check/flow-a/*" not in other and claim_check_prefix("flow-ab") in other


def test_only_the_flows_service_account_may_assume_its_role() -> None:
    document = trust_policy(
        "flow-a",
        account_id=ACCOUNT,
        oidc_issuer="https://oidc.eks.us-east-1.amazonaws.com/id/ABC123",
        namespace="flows",
    )
    [statement] = document["Statement"]
    issuer = "oidc.eks.us-east-1.amazonaws.com/id/ABC123"
    assert statement["Principal"] == {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{issuer}"}
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Condition"] == {
        "StringEquals": {
            f"{issuer}:sub": f"system:serviceaccount:flows:{role_name('flow-a')}",
            f"{issuer}:aud": "sts.amazonaws.com",
        }
    }
    assert role_name("flow-a") != role_name("flow-ab") and len(role_name("x" * 300)) <= 64


# ---- the policy enforced: moto with IAM checks on -----------------------------------------
@dataclass
class EnforcingMoto:
    url: str
    admin: tuple[str, str]

    def client(self, service: str, credentials: tuple[str, str]) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=credentials[0],
            aws_secret_access_key=credentials[1],
        )

    def user_with(self, name: str, document: dict[str, Any]) -> tuple[str, str]:
        """An IAM user with `document` (standing in for the flow's role). moto authorizes
        GetQueueUrl against `*` only (it cannot tell the queue from a QueueName parameter),
        where AWS checks the queue's ARN our policy lists: that one action is added for `*`
        (it returns a URL, never a message). And moto names DeleteMessageBatch itself, which
        AWS authorizes as sqs:DeleteMessage: it is added for the same queue ARNs."""
        document = json.loads(json.dumps(document))
        queues = document["Statement"][0]["Resource"]
        document["Statement"] += [
            {"Effect": "Allow", "Action": "sqs:GetQueueUrl", "Resource": "*"},
            {"Effect": "Allow", "Action": "sqs:DeleteMessageBatch", "Resource": queues},
        ]
        iam = self.client("iam", self.admin)
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="worker", PolicyDocument=json.dumps(document))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def queue(self, credentials: tuple[str, str], *, worker: bool) -> SqsQueue:
        return SqsQueue(
            self.client("sqs", credentials),
            self.client("s3", credentials),
            BUCKET,
            create_queues=not worker,
            max_message_bytes=2048,  # small, so a claim check is written
        )


@pytest.fixture(scope="module")
def moto() -> Iterator[EnforcingMoto]:
    """A moto server of its own (the suite's runs without IAM checks): its first three
    requests are unauthenticated and create an admin; every request after is checked."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto did not start") from None
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        bootstrap = EnforcingMoto(url, ("bootstrap", "bootstrap"))
        iam = bootstrap.client("iam", bootstrap.admin)
        iam.create_user(UserName="orchestrator")
        everything = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="orchestrator", PolicyName="all", PolicyDocument=json.dumps(everything)
        )
        key = iam.create_access_key(UserName="orchestrator")["AccessKey"]
        moto = EnforcingMoto(url, (str(key["AccessKeyId"]), str(key["SecretAccessKey"])))
        moto.client("s3", moto.admin).create_bucket(Bucket=BUCKET)
        yield moto
    finally:
        process.terminate()
        process.wait(timeout=30)


def message(flow_id: str, step_id: str, data: str) -> StepMessage:
    return StepMessage(
        run_id=f"r-{flow_id}", flow_id=flow_id, step_id=step_id, message_id=f"m-{step_id}",
        tenant="acme", attempt=1, data_json=json.dumps({"x": data}), token="step-token",
    )  # fmt: skip


def _denied(attempt: Any) -> bool:
    try:
        attempt()
    except (PermanentError, ClientError) as exc:
        text = str(exc) if isinstance(exc, PermanentError) else str(exc.response)
        return "403" in text or "AccessDenied" in text
    return False


def test_flow_a_credentials_reach_only_flow_a_queues_and_claim_checks(moto: EnforcingMoto) -> None:
    orchestrator = moto.queue(moto.admin, worker=False)  # step-execute: creates and publishes
    own, foreign = queues("flow-a")[0], queues("flow-b")[0]
    orchestrator.publish(own, [message("flow-a", "a", "mine")])
    orchestrator.publish(foreign, [message("flow-b", "a", "B's data " + "y" * 4000)])
    [foreign_object] = [
        o["Key"]
        for o in moto.client("s3", moto.admin).list_objects_v2(Bucket=BUCKET)["Contents"]
        if o["Key"].startswith(claim_check_prefix("flow-b"))
    ]
    worker_a = moto.user_with("flow-a-role", policy("flow-a"))

    # Its own queue works as the worker uses it: receive, then ack (delete).
    queue = moto.queue(worker_a, worker=True)
    [delivery] = queue.receive(own, "pod-1", wait_seconds=0)
    assert delivery.message is not None and delivery.message.data == {"x": "mine"}
    queue.ack(own, [delivery])

    sqs, s3 = moto.client("sqs", worker_a), moto.client("s3", worker_a)
    foreign_url = orchestrator.queue_url(foreign)
    allowed = [
        name
        for name, attempt in {
            "receive B's queue": lambda: queue.receive(foreign, "pod-1", wait_seconds=0),
            "ReceiveMessage on B's URL": lambda: sqs.receive_message(QueueUrl=foreign_url),
            "read B's claim check": lambda: s3.get_object(Bucket=BUCKET, Key=foreign_object),
            "delete B's claim check": lambda: s3.delete_object(Bucket=BUCKET, Key=foreign_object),
            "list the bucket": lambda: s3.list_objects_v2(Bucket=BUCKET),
            "list queues": lambda: sqs.list_queues(),
            "create a queue": lambda: sqs.create_queue(QueueName="mine-now"),
            "send into its own queue": lambda: sqs.send_message(
                QueueUrl=orchestrator.queue_url(own), MessageBody="forged"
            ),
            "purge B's queue": lambda: sqs.purge_queue(QueueUrl=foreign_url),
        }.items()
        if not _denied(attempt)
    ]
    assert allowed == []
    # B's message and claim check are untouched.
    b_queue = moto.queue(moto.user_with("flow-b-role", policy("flow-b")), worker=True)
    [b_delivery] = b_queue.receive(foreign, "pod-1", wait_seconds=0)
    assert b_delivery.message is not None and b_delivery.message.data["x"].startswith("B's data")


def test_a_worker_does_not_create_a_queue_that_is_not_there_yet(moto: EnforcingMoto) -> None:
    worker = moto.queue(moto.user_with("flow-c-role", policy("flow-c")), worker=True)
    assert worker.receive(queues("flow-c")[0], "pod-1", wait_seconds=0) == []


# ---- what deploy applies: a ServiceAccount (IRSA role) per flow, no AWS credentials -------
ROLE_PREFIX = f"arn:aws:iam::{ACCOUNT}:role/orchestrator/"


def test_each_flow_runs_under_its_own_role_and_gets_no_aws_credentials(
    redis: Redis,
    clock: FakeClock,
    kube_api: FakeKubeApi,
    component_repo: FakeComponentRepo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ambient = {
        "AWS_ACCESS_KEY_ID": "AKIAORCHESTRATOR",
        "AWS_SECRET_ACCESS_KEY": "orchestrator-secret",
        "AWS_SESSION_TOKEN": "orchestrator-session",
    }
    for name, value in ambient.items():
        monkeypatch.setenv(name, value)  # the deploy function's own (ambient) credentials
    component_repo.add("comp", replicas=1)
    kube_api.auto_ready = True
    harness = DeployHarness(redis, clock, kube_api, component_repo)
    harness.services.worker = WorkerSettings(
        queue_backend="sqs",
        claim_check_bucket=BUCKET,
        k_sink="http://sink.invalid",
        iam_role_prefix=ROLE_PREFIX,
    )
    try:
        harness.start(flow_doc("flow-a", [step("a"), step("b")]))
        harness.start(flow_doc("flow-b", tenant="rival", owner="mallory"))
        accounts = {
            a["metadata"]["annotations"][FLOW_ID_ANNOTATION]: a
            for a in kube_api.objects("serviceaccounts")
        }
        assert set(accounts) == {"flow-a", "flow-b"}
        account = accounts["flow-a"]
        assert account["metadata"]["name"] == role_name("flow-a")
        annotations = account["metadata"]["annotations"]
        assert annotations[IRSA_ROLE_ANNOTATION] == ROLE_PREFIX + role_name("flow-a")
        assert json.loads(annotations[IAM_POLICY_ANNOTATION]) == worker_policy(
            "flow-a", queues("flow-a"), region="*", account_id=ACCOUNT, bucket=BUCKET
        )
        for flow_id in ("flow-a", "flow-b"):
            selector = f"orchestrator.openintegrationhub.org/flow={flow_id}"
            for deployment in kube_api.objects("deployments", selector):
                pod = deployment["spec"]["template"]["spec"]
                assert pod["serviceAccountName"] == role_name(flow_id)
            for secret in kube_api.objects("secrets", selector):
                names = set(secret["data"])
                values = " ".join(base64.b64decode(v).decode() for v in secret["data"].values())
                assert not {n for n in names if n.startswith("AWS_") and n != "AWS_ENDPOINT_URL"}
                assert not any(value in values for value in ambient.values())
        harness.stop("flow-a")
        assert [a["metadata"]["name"] for a in kube_api.objects("serviceaccounts")] == [
            role_name("flow-b")
        ]
    finally:
        harness.close()


def test_queue_names_and_claim_check_keys_are_those_of_the_previous_release(aws: Aws) -> None:
    """Upgrade: the names a policy lists are the ones queues and objects already have (the
    previous release's rule, spelled out), so existing queues and claim checks keep working."""
    queue = keys.step_queue("flow-1", "step-a")
    digest = hashlib.sha256(queue.encode()).hexdigest()[:16]
    assert sqs_name(queue) == f"co-q-flow-1-step-a-{digest}"
    big = SqsQueue(aws.sqs, aws.s3, aws.bucket, max_message_bytes=1024)
    big.publish(queue, [message("flow-1", "step-a", "z" * 4000)])
    assert aws.objects() == ["claim-check/flow-1/step-a/m-step-a-1.json"]


class CountingRoles(AwsWorkerRoles):
    def __init__(self, iam: Any) -> None:
        super().__init__(iam)
        self.ensured = 0

    def ensure(self, name: str, **kwargs: Any) -> None:
        self.ensured += 1
        super().ensure(name, **kwargs)


def test_deploy_creates_each_flows_role_updates_it_and_deletes_it_on_stop(
    aws: Aws,
    redis: Redis,
    clock: FakeClock,
    kube_api: FakeKubeApi,
    component_repo: FakeComponentRepo,
) -> None:
    """WORKER_IAM_OIDC_ISSUER set: deploy writes the roles itself (here into the suite's moto)."""
    issuer = "https://oidc.eks.us-east-1.amazonaws.com/id/ABC123"
    boundary = f"arn:aws:iam::{ACCOUNT}:policy/orchestrator-workers-boundary"
    iam = boto3.client("iam", endpoint_url=aws.endpoint_url, region_name=REGION)
    component_repo.add("comp", replicas=1)
    kube_api.auto_ready = True
    harness = DeployHarness(redis, clock, kube_api, component_repo)
    harness.services.worker = WorkerSettings(
        queue_backend="sqs",
        claim_check_bucket=BUCKET,
        k_sink="http://sink.invalid",
        iam_role_prefix=ROLE_PREFIX,
    )
    roles = CountingRoles(iam)
    harness.services.credentials = IrsaRoles(
        roles,
        role_prefix=ROLE_PREFIX,
        oidc_issuer=issuer,
        namespace="flows",
        bucket=BUCKET,
        boundary=boundary,
        clock=clock,
    )

    def role_policy(flow_id: str) -> Any:
        document = iam.get_role_policy(RoleName=role_name(flow_id), PolicyName="step-queues")
        raw = document["PolicyDocument"]
        return json.loads(raw) if isinstance(raw, str) else raw

    try:
        harness.start(flow_doc("flow-a"))
        role = iam.get_role(RoleName=role_name("flow-a"))["Role"]
        assert role["Arn"] == ROLE_PREFIX + role_name("flow-a")
        assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == boundary
        trust = role["AssumeRolePolicyDocument"]
        trust = json.loads(trust) if isinstance(trust, str) else trust
        assert trust == trust_policy("flow-a", account_id=ACCOUNT, oidc_issuer=issuer,
                                     namespace="flows")  # fmt: skip
        assert role_policy("flow-a") == worker_policy(
            "flow-a", [keys.step_queue("flow-a", "a")], region="*", account_id=ACCOUNT,
            bucket=BUCKET,
        )  # fmt: skip
        written = roles.ensured
        harness.tick()  # reconcile grants every pass; IAM is written again only when due
        assert roles.ensured == written
        clock.advance(IrsaRoles.REWRITE_SECONDS + 1)
        harness.tick()
        assert roles.ensured == written + 1
        harness.start(flow_doc("flow-a", [step("a"), step("b")]))  # a step more: the policy too
        assert role_policy("flow-a") == worker_policy(
            "flow-a", queues("flow-a"), region="*", account_id=ACCOUNT, bucket=BUCKET
        )
        harness.stop("flow-a")
        with pytest.raises(ClientError):
            iam.get_role(RoleName=role_name("flow-a"))
    finally:
        harness.close()
