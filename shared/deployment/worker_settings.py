"""What every step worker is given (its Secret's shared variables) and where its pods may
connect (docs/architecture.md §5, docs/security.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from shared.deployment import network_policy
from shared.settings import Settings


@dataclass(frozen=True)
class WorkerSettings:
    """Settings every step worker needs, passed through into its Secret. `redis_url` is not
    among them: a worker gets its flow's own queue credentials instead."""

    queue_backend: str = "redis"
    redis_url: str = ""
    redis_mode: str = "standalone"
    queue_url: str | None = None  # where workers reach their queue (only its host and port go
    # into a manifest, as a NetworkPolicy peer)
    aws_endpoint_url: str | None = None
    claim_check_bucket: str | None = None
    k_sink: str | None = None
    # The hub's services a connector calls (passed as OIH passes them, and let through).
    secret_service_url: str | None = None
    snapshots_service_url: str | None = None
    attachment_storage_service_url: str | None = None
    # Never reachable from a flow pod (with 169.254.169.254).
    cluster_cidrs: tuple[str, ...] = ()
    # QUEUE_BACKEND=amqp: what else ferryman gets (ELASTICIO_API_URI, _DATAHUB_BASE_URL)
    hub_api_uri: str | None = None
    datahub_url: str | None = None
    # SQS with IRSA: `arn:<partition>:iam::<account>:role/<path>`; each flow's pods run under
    # a ServiceAccount of their own mapped to the role <prefix><role_name(flow)>.
    iam_role_prefix: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerSettings:
        return cls(
            queue_backend=settings.queue_backend,
            redis_url=settings.redis_url,
            redis_mode=settings.redis_mode,
            queue_url=(
                settings.worker_amqp_url or settings.amqp_url
                if settings.queue_backend == "amqp"
                else settings.worker_redis_url or settings.redis_url
            ),
            aws_endpoint_url=settings.aws_endpoint_url,
            claim_check_bucket=settings.claim_check_bucket,
            k_sink=settings.k_sink,
            secret_service_url=settings.secret_service_url,
            snapshots_service_url=settings.snapshots_service_url,
            attachment_storage_service_url=settings.attachment_storage_service_url,
            cluster_cidrs=(
                *settings.cluster_pod_cidrs,
                *settings.cluster_service_cidrs,
                *settings.cluster_node_cidrs,
            ),
            hub_api_uri=settings.hub_api_uri,
            datahub_url=settings.datahub_url,
            iam_role_prefix=settings.worker_iam_role_prefix,
        )

    @property
    def runs_ferryman(self) -> bool:
        """amqp: step containers run their image's own entrypoint (ferryman), not our worker."""
        return self.queue_backend == "amqp"

    def ferryman_services(self) -> dict[str, str | None]:
        return {
            # ferryman requires API_URI (OIH gives its orchestrator's own); it calls nothing there
            "API_URI": self.hub_api_uri or self.k_sink or "http://localhost",
            "SECRET_SERVICE_BASE_URL": self.secret_service_url,
            "SNAPSHOTS_SERVICE_BASE_URL": self.snapshots_service_url,
            "ATTACHMENT_STORAGE_SERVICE_BASE_URL": self.attachment_storage_service_url,
            "DATAHUB_BASE_URL": self.datahub_url,
        }

    NAMES: ClassVar[tuple[str, ...]] = (
        "QUEUE_BACKEND",
        "REDIS_MODE",
        "AWS_ENDPOINT_URL",
        "CLAIM_CHECK_BUCKET",
        "K_SINK",
        "SECRET_SERVICE_BASE_URL",
        "SNAPSHOTS_SERVICE_BASE_URL",
        "ATTACHMENT_STORAGE_SERVICE_BASE_URL",
    )

    def environment(self) -> dict[str, str]:
        values = {
            "QUEUE_BACKEND": self.queue_backend,
            # Only on a cluster (a worker there needs a cluster client); elsewhere the URL
            # says it all, and Secrets stay as the previous release wrote them.
            "REDIS_MODE": "cluster" if self._on_cluster else None,
            "AWS_ENDPOINT_URL": self.aws_endpoint_url,
            "CLAIM_CHECK_BUCKET": self.claim_check_bucket,
            "K_SINK": self.k_sink,
            "SECRET_SERVICE_BASE_URL": _no_slash(self.secret_service_url),
            "SNAPSHOTS_SERVICE_BASE_URL": _no_slash(self.snapshots_service_url),
            "ATTACHMENT_STORAGE_SERVICE_BASE_URL": _no_slash(self.attachment_storage_service_url),
        }
        return {k: v for k, v in values.items() if v}

    @property
    def _on_cluster(self) -> bool:
        return self.queue_backend == "redis" and self.redis_mode == "cluster"

    def egress(self) -> list[dict[str, object]]:
        """The egress rules of every flow pod (shared/deployment/network_policy.py)."""
        redis = self.queue_url or self.redis_url
        queue = {"redis": redis, "amqp": self.queue_url}.get(
            self.queue_backend, self.aws_endpoint_url
        )
        return network_policy.egress_rules(
            cluster_cidrs=self.cluster_cidrs,
            endpoints=(
                queue,
                self.k_sink,
                self.secret_service_url,
                self.snapshots_service_url,
                self.attachment_storage_service_url,
                self.datahub_url,
            ),
        )


def _no_slash(url: str | None) -> str | None:
    return url.rstrip("/") if url else url
