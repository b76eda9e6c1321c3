"""Builds deploy's services from the settings: the only place that picks its adapters."""

from __future__ import annotations

import atexit
import logging
from typing import Any

from redis import Redis

from shared.adapters.component_repository import make_component_repository
from shared.clock import Clock
from shared.deployment.queue_credentials import (
    AmqpQueueCredentials,
    NoQueueCredentials,
    QueueCredentials,
    RedisQueueCredentials,
)
from shared.deployment.queue_policy import IrsaRoles
from shared.deployment.services import DeployServices, FlowTokens, IamFlowTokens, NoFlowTokens
from shared.deployment.worker_settings import WorkerSettings
from shared.ports.driver import DeployDriver
from shared.settings import Settings
from shared.wiring.users import make_user_directory

log = logging.getLogger(__name__)


def build_services(settings: Settings, clock: Clock, redis: Redis) -> DeployServices:
    tokens: FlowTokens
    if settings.iam_url:
        from shared.adapters.iam import IamClient

        tokens = IamFlowTokens(
            redis, IamClient.from_settings(settings), clock, settings.orchestrator_key
        )
    else:
        log.warning("IAM_URL is unset: flows are deployed without flow tokens")
        tokens = NoFlowTokens()
    return DeployServices(
        driver=make_driver(settings),
        components=make_component_repository(settings, clock),
        tokens=tokens,
        worker=WorkerSettings.from_settings(settings),
        credentials=make_queue_credentials(settings, redis),
        users=make_user_directory(settings),
    )


def make_queue_credentials(settings: Settings, redis: Redis) -> QueueCredentials:
    """Redis Streams: one ACL user per flow; amqp: one RabbitMQ user per flow; SQS: the pods'
    IAM role (docs/security.md, "IRSA"), created here when WORKER_IAM_OIDC_ISSUER is set, else
    by the operator."""
    if settings.queue_backend == "sqs" and settings.worker_iam_oidc_issuer:
        from shared.adapters.aws_iam import AwsWorkerRoles

        return IrsaRoles(
            AwsWorkerRoles.connect(endpoint_url=settings.aws_endpoint_url),
            role_prefix=settings.worker_iam_role_prefix or "",
            oidc_issuer=settings.worker_iam_oidc_issuer,
            namespace=settings.kubernetes_namespace,
            bucket=settings.claim_check_bucket or "",
            boundary=settings.worker_iam_permissions_boundary,
        )
    if settings.queue_backend == "amqp":
        from shared.adapters.rabbitmq import RabbitMqFlowAccess

        amqp_url = settings.amqp_url or ""
        return AmqpQueueCredentials(
            redis,
            RabbitMqFlowAccess(amqp_url, settings.amqp_management_url or ""),
            settings.orchestrator_key,
            settings.worker_amqp_url or amqp_url,
        )
    if settings.queue_backend != "redis":
        return NoQueueCredentials()
    from shared.adapters.redis_acl import RedisAcl

    return RedisQueueCredentials(
        redis,
        RedisAcl.for_client(redis),
        settings.orchestrator_key,
        settings.worker_redis_url or settings.redis_url,
        cluster=settings.redis_mode == "cluster",
    )


def make_driver(settings: Settings, **options: Any) -> DeployDriver:
    """The driver `settings.deploy_driver` names. Options go to its constructor helper:
    kubernetes: host, token, request_timeout; local: command, workdir."""
    if settings.deploy_driver == "kubernetes":
        from shared.adapters.kubernetes import KubernetesDriver, make_api_client

        client = make_api_client(host=options.pop("host", None), token=options.pop("token", None))
        return KubernetesDriver(client, settings.kubernetes_namespace, **options)
    if settings.deploy_driver == "local":
        from shared.adapters.local_driver import LocalDriver

        local = LocalDriver(**options)
        atexit.register(local.close)  # no worker process or temp folder outlives the function
        driver: DeployDriver = local
        return driver
    raise ValueError(f"ORCHESTRATOR_DEPLOY_DRIVER: unknown driver {settings.deploy_driver!r}")
