"""policy-check's outside services, chosen by settings (the only place that names the adapter)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from shared.clock import Clock
from shared.policing.metrics_reader import PodUsageSource
from shared.ports.driver import PodUsage
from shared.settings import Settings


class KubernetesPodUsage:
    """Reads pod usage through shared/adapters/kubernetes.py; the client is built on first use."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._driver: Any = None

    def pod_usage(self, selector: str | None = None) -> list[PodUsage]:
        if self._driver is None:
            from shared.adapters.kubernetes import KubernetesDriver, make_api_client

            self._driver = KubernetesDriver(make_api_client(), self._settings.kubernetes_namespace)
        result: list[PodUsage] = self._driver.pod_usage(selector)
        return result


@dataclass
class PolicyServices:
    pod_usage: PodUsageSource | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def build_services(settings: Settings, clock: Clock, redis: Redis) -> PolicyServices:
    if settings.deploy_driver == "kubernetes":
        return PolicyServices(pod_usage=KubernetesPodUsage(settings))
    return PolicyServices()
