"""Every setting (README.md "Settings"), read once from a mapping (the environment) into one
dataclass.

Invalid values stop the function at start with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

from shared.errors import PermanentError

DEPLOY_DRIVERS = ("kubernetes", "local")
QUEUE_BACKENDS = ("redis", "sqs", "amqp")
REDIS_MODES = ("standalone", "cluster", "sentinel")
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
AUTH_MODES = ("required", "off")
# Who fires cron flows: our own ticks, or the hub's scheduler service (its flow.execute).
CRON_OWNERS = ("orchestrator", "hub")
MIN_KEY_BYTES = 32
# kubeadm's defaults; what a flow pod may never reach (docs/security.md, "The network").
DEFAULT_POD_CIDRS = ("10.244.0.0/16",)
DEFAULT_SERVICE_CIDRS = ("10.96.0.0/12",)
# The hub's services a connector calls, as OIH's own manifests name them (namespace `oih`).
DEFAULT_SECRET_SERVICE_URL = "http://secret-service.oih.svc.cluster.local:3000/api/v1"
DEFAULT_SNAPSHOTS_SERVICE_URL = "http://snapshots-service.oih.svc.cluster.local:1234"
DEFAULT_ATTACHMENT_STORAGE_SERVICE_URL = (
    "http://attachment-storage-service.oih.svc.cluster.local:3002"
)


class SettingsError(PermanentError):
    """A setting is missing or invalid; the message names every bad variable."""


@dataclass(frozen=True)
class Settings:
    redis_url: str
    orchestrator_key: str
    redis_mode: str = "standalone"
    k_sink: str | None = None
    policy_file: str | None = None
    deploy_driver: str = "kubernetes"
    kubernetes_namespace: str = "flows"
    deploy_ready_timeout: float = 300.0
    component_repository_url: str | None = None
    iam_jwks_url: str | None = None
    iam_issuer: str | None = None
    iam_audience: str | None = None
    iam_introspect_url: str | None = None
    iam_url: str | None = None
    iam_service_token: str | None = None
    auth: str = "required"
    queue_backend: str = "redis"
    aws_endpoint_url: str | None = None
    claim_check_bucket: str | None = None
    # The Redis address step workers connect to with their flow's own credentials (any
    # credentials in it are dropped); default: REDIS_URL's address.
    worker_redis_url: str | None = None
    # The hub's RabbitMQ event bus (`orchestrator bridge`, docs/oih.md): amqp:// or amqps://
    oih_event_bus: str | None = None
    # QUEUE_BACKEND=amqp (ferryman's transport, docs/oih.md): the orchestrator's own AMQP URL
    # (it declares each flow's exchange and queues), the management API that creates each
    # flow's RabbitMQ user, and the address step containers connect to (AMQP_URL's address).
    amqp_url: str | None = None
    amqp_management_url: str | None = None
    worker_amqp_url: str | None = None
    # What ferryman is given beside the hub's services below (ELASTICIO_API_URI, _DATAHUB_BASE_URL).
    hub_api_uri: str | None = None
    datahub_url: str | None = None
    # IAM subjects that, like admins, send flow events for the `startedBy` user they name.
    hub_service_accounts: tuple[str, ...] = ()
    # Flow pods (docs/security.md, "The network"): the cluster's address ranges they may never
    # reach, and the hub's services they may (passed to them as OIH passes them).
    cluster_pod_cidrs: tuple[str, ...] = DEFAULT_POD_CIDRS
    cluster_service_cidrs: tuple[str, ...] = DEFAULT_SERVICE_CIDRS
    cluster_node_cidrs: tuple[str, ...] = ()  # the nodes' network (kubelet, API endpoint)
    secret_service_url: str | None = DEFAULT_SECRET_SERVICE_URL
    snapshots_service_url: str | None = DEFAULT_SNAPSHOTS_SERVICE_URL
    attachment_storage_service_url: str | None = DEFAULT_ATTACHMENT_STORAGE_SERVICE_URL
    # Tuning (README, "Settings"): how long one tick keeps working, for a
    # PingSource that ticks once a minute (0 where a local clock ticks every second).
    flow_start_work_through_seconds: float = 55.0
    step_tick_work_seconds: float = 0.0
    step_reclaim_idle_seconds: float = 120.0
    run_retention_seconds: float = 86400.0
    # At most this many items one tick walks (deploy: targets and objects; policy-check: runs
    # and subjects); the rest wait for the next ticks (a cursor in Redis).
    tick_page_size: int = 200
    # Input bounds (docs/security.md): a body larger than this is answered 413 before it is
    # read; JSON nested deeper is answered 400 before any state changes.
    max_request_bytes: int = 1024 * 1024
    max_json_depth: int = 64
    # The largest value one JSONata evaluation (an edge's condition or mapper) may build.
    jsonata_max_value_bytes: int = 2 * 1024 * 1024
    # Replicas that must hold an event's writes before it is answered (docs/reliability.md).
    redis_wait_replicas: int = 0
    redis_wait_timeout_seconds: float = 1.0
    # A flow whose cron fires more often than this is refused (400 naming cron).
    cron_min_interval_seconds: float = 60.0
    # How long a stopped flow's tombstone is kept (stops of made-up ids must not stay forever);
    # a start older than the stop and redelivered later than this would bring the flow back.
    flow_tombstone_ttl_seconds: float = 7 * 86400.0
    # `hub`: the hub's scheduler fires cron flows (flow.execute); we schedule nothing.
    cron_owner: str = "orchestrator"
    # The dead-letter sink (functions/dead_letters): with an audience set, every event must
    # carry Knative's OIDC token (Authorization: Bearer) for it, signed by a key of the JWKS,
    # from the issuer, for a subject starting with one of the prefixes (docs/security.md).
    # SQS with IRSA: the prefix of the flows' IAM role ARNs (docs/security.md, "IRSA").
    worker_iam_role_prefix: str | None = None
    # With it, deploy creates and deletes those roles itself (the cluster's OIDC issuer for
    # their trust policies; every role gets the permissions boundary, if one is named).
    worker_iam_oidc_issuer: str | None = None
    worker_iam_permissions_boundary: str | None = None
    dead_letters_oidc_audience: str | None = None
    dead_letters_oidc_issuer: str | None = None
    dead_letters_oidc_jwks_url: str | None = None
    dead_letters_oidc_subjects: tuple[str, ...] = ()

    @property
    def auth_required(self) -> bool:
        return self.auth == "required"

    def __repr__(self) -> str:  # never print secrets
        return (
            f"Settings(redis_url={_redact_url(self.redis_url)!r}, k_sink={self.k_sink!r}, "
            f"deploy_driver={self.deploy_driver!r}, auth={self.auth!r}, "
            f"queue_backend={self.queue_backend!r}, orchestrator_key=<redacted>)"
        )

    __str__ = __repr__

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, sink: bool = False) -> Settings:
        """`sink`: the dead-letter sink's settings, which need neither ORCHESTRATOR_KEY nor
        the IAM (it verifies no IAM token and signs nothing)."""
        problems: list[str] = []

        def text(name: str) -> str | None:
            value = env.get(name)
            if value is None:
                return None
            value = value.strip()
            return value or None

        def url(name: str) -> str | None:
            value = text(name)
            if value is not None:
                parsed = urlparse(value)
                if not parsed.scheme or not (parsed.netloc or parsed.scheme == "unix"):
                    problems.append(f"{name}: not a URL: {value!r}")
            return value

        def choice(name: str, allowed: tuple[str, ...], default: str) -> str:
            value = text(name) or default
            if value not in allowed:
                problems.append(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")
            return value

        redis_url = url("REDIS_URL")
        if redis_url is None:
            problems.append("REDIS_URL: required")
        elif urlparse(redis_url).scheme not in REDIS_SCHEMES:
            problems.append(
                f"REDIS_URL: scheme must be one of {', '.join(REDIS_SCHEMES)}, got "
                f"{_redact_url(redis_url)!r}"
            )
        sentinel_url = redis_url is not None and urlparse(redis_url).scheme.endswith("+sentinel")
        redis_mode = choice("REDIS_MODE", REDIS_MODES, "sentinel" if sentinel_url else "standalone")
        if sentinel_url and redis_mode != "sentinel":
            problems.append(
                f"REDIS_MODE: a redis+sentinel:// URL needs sentinel, got {redis_mode!r}"
            )

        key = env.get("ORCHESTRATOR_KEY") or ""
        if sink:
            pass
        elif not key:
            problems.append("ORCHESTRATOR_KEY: required (at least 32 bytes)")
        elif len(key.encode()) < MIN_KEY_BYTES:
            problems.append(f"ORCHESTRATOR_KEY: must be at least {MIN_KEY_BYTES} bytes")

        timeout_text = text("DEPLOY_READY_TIMEOUT") or "300"
        try:
            ready_timeout = float(timeout_text)
            if not ready_timeout > 0:
                raise ValueError
        except ValueError:
            problems.append(
                f"DEPLOY_READY_TIMEOUT: must be a positive number of seconds, got {timeout_text!r}"
            )
            ready_timeout = 300.0

        def seconds(name: str, default: float, *, below: float | None = None) -> float:
            value = text(name)
            if value is None:
                return default
            try:
                number = float(value)
                if number < 0 or (below is not None and number >= below):
                    raise ValueError
            except ValueError:
                limit = f" below {below:g}" if below is not None else ""
                problems.append(
                    f"{name}: must be a non-negative number of seconds{limit}, got {value!r}"
                )
                return default
            return number

        def count(name: str, default: int) -> int:
            value = text(name)
            if value is None:
                return default
            if not value.isdigit() or int(value) < 1:
                problems.append(f"{name}: must be a positive whole number, got {value!r}")
                return default
            return int(value)

        def whole(name: str, default: int, *, below: int) -> int:
            value = text(name)
            if value is None:
                return default
            if not value.isdigit() or int(value) >= below:
                problems.append(
                    f"{name}: must be a whole number from 0 to {below - 1}, got {value!r}"
                )
                return default
            return int(value)

        def cidrs(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
            value = text(name)
            if value is None:
                return default
            try:
                return cidr_list(value)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
                return default

        def hub_url(name: str, default: str) -> str:
            return url(name) or default

        namespace = text("KUBERNETES_NAMESPACE") or "flows"
        if not _is_dns_label(namespace):
            problems.append(f"KUBERNETES_NAMESPACE: not a DNS label: {namespace!r}")

        settings = cls(
            redis_url=redis_url or "",
            orchestrator_key=key,
            redis_mode=redis_mode,
            k_sink=url("K_SINK"),
            policy_file=text("ORCHESTRATOR_POLICY_FILE"),
            deploy_driver=choice("ORCHESTRATOR_DEPLOY_DRIVER", DEPLOY_DRIVERS, "kubernetes"),
            kubernetes_namespace=namespace,
            deploy_ready_timeout=ready_timeout,
            component_repository_url=url("COMPONENT_REPOSITORY_URL"),
            iam_jwks_url=url("IAM_JWKS_URL"),
            iam_issuer=text("IAM_ISSUER"),
            iam_audience=text("IAM_AUDIENCE"),
            iam_introspect_url=url("IAM_INTROSPECT_URL"),
            iam_url=url("IAM_URL"),
            iam_service_token=text("IAM_SERVICE_TOKEN"),
            auth=choice("ORCHESTRATOR_AUTH", AUTH_MODES, "required"),
            queue_backend=choice("QUEUE_BACKEND", QUEUE_BACKENDS, "redis"),
            aws_endpoint_url=url("AWS_ENDPOINT_URL"),
            claim_check_bucket=text("CLAIM_CHECK_BUCKET"),
            worker_redis_url=url("WORKER_REDIS_URL"),
            oih_event_bus=text("OIH_EVENT_BUS"),
            amqp_url=text("AMQP_URL"),
            amqp_management_url=url("AMQP_MANAGEMENT_URL"),
            worker_amqp_url=text("WORKER_AMQP_URL"),
            hub_api_uri=url("HUB_API_URI"),
            datahub_url=url("DATAHUB_BASE_URL"),
            hub_service_accounts=tuple(
                name.strip()
                for name in (text("HUB_SERVICE_ACCOUNTS") or "").split(",")
                if name.strip()
            ),
            cluster_pod_cidrs=cidrs("CLUSTER_POD_CIDRS", DEFAULT_POD_CIDRS),
            cluster_service_cidrs=cidrs("CLUSTER_SERVICE_CIDRS", DEFAULT_SERVICE_CIDRS),
            cluster_node_cidrs=cidrs("CLUSTER_NODE_CIDRS", ()),
            secret_service_url=hub_url("SECRET_SERVICE_BASE_URL", DEFAULT_SECRET_SERVICE_URL),
            snapshots_service_url=hub_url(
                "SNAPSHOTS_SERVICE_BASE_URL", DEFAULT_SNAPSHOTS_SERVICE_URL
            ),
            attachment_storage_service_url=hub_url(
                "ATTACHMENT_STORAGE_SERVICE_BASE_URL", DEFAULT_ATTACHMENT_STORAGE_SERVICE_URL
            ),
            flow_start_work_through_seconds=seconds(
                "FLOW_START_WORK_THROUGH_SECONDS", 55.0, below=3600
            ),
            step_tick_work_seconds=seconds("STEP_TICK_WORK_SECONDS", 0.0, below=3600),
            step_reclaim_idle_seconds=seconds("STEP_RECLAIM_IDLE_SECONDS", 120.0),
            run_retention_seconds=seconds("RUN_RETENTION_SECONDS", 86400.0),
            tick_page_size=count("TICK_PAGE_SIZE", 200),
            max_request_bytes=count("MAX_REQUEST_BYTES", 1024 * 1024),
            max_json_depth=count("MAX_JSON_DEPTH", 64),
            jsonata_max_value_bytes=count("JSONATA_MAX_VALUE_BYTES", 2 * 1024 * 1024),
            redis_wait_replicas=whole("REDIS_WAIT_REPLICAS", 0, below=100),
            redis_wait_timeout_seconds=seconds("REDIS_WAIT_TIMEOUT_SECONDS", 1.0, below=60),
            cron_min_interval_seconds=seconds("CRON_MIN_INTERVAL_SECONDS", 60.0),
            flow_tombstone_ttl_seconds=seconds("FLOW_TOMBSTONE_TTL_SECONDS", 7 * 86400.0),
            cron_owner=choice("CRON_OWNER", CRON_OWNERS, "orchestrator"),
            worker_iam_role_prefix=text("WORKER_IAM_ROLE_PREFIX"),
            worker_iam_oidc_issuer=url("WORKER_IAM_OIDC_ISSUER"),
            worker_iam_permissions_boundary=text("WORKER_IAM_PERMISSIONS_BOUNDARY"),
            dead_letters_oidc_audience=text("DEAD_LETTERS_OIDC_AUDIENCE"),
            dead_letters_oidc_issuer=text("DEAD_LETTERS_OIDC_ISSUER"),
            dead_letters_oidc_jwks_url=url("DEAD_LETTERS_OIDC_JWKS_URL"),
            dead_letters_oidc_subjects=tuple(
                part.strip()
                for part in (text("DEAD_LETTERS_OIDC_SUBJECTS") or "").split(",")
                if part.strip()
            ),
        )
        if settings.dead_letters_oidc_audience:
            for name, value in (
                ("DEAD_LETTERS_OIDC_ISSUER", settings.dead_letters_oidc_issuer),
                ("DEAD_LETTERS_OIDC_JWKS_URL", settings.dead_letters_oidc_jwks_url),
                ("DEAD_LETTERS_OIDC_SUBJECTS", settings.dead_letters_oidc_subjects),
            ):
                if not value:
                    problems.append(f"{name}: required when DEAD_LETTERS_OIDC_AUDIENCE is set")
        if settings.worker_iam_oidc_issuer and not settings.worker_iam_role_prefix:
            problems.append("WORKER_IAM_ROLE_PREFIX: required with WORKER_IAM_OIDC_ISSUER")
        if sink:
            pass
        elif settings.auth_required and not (settings.iam_jwks_url or settings.iam_introspect_url):
            problems.append(
                "IAM_JWKS_URL: required (or IAM_INTROSPECT_URL) when ORCHESTRATOR_AUTH=required"
            )
        if settings.oih_event_bus and not is_amqp_url(settings.oih_event_bus):
            problems.append("OIH_EVENT_BUS: must be an amqp:// or amqps:// URL")
        for name, value in (("AMQP_URL", settings.amqp_url),
                            ("WORKER_AMQP_URL", settings.worker_amqp_url)):  # fmt: skip
            if value and not is_amqp_url(value):
                problems.append(f"{name}: must be an amqp:// or amqps:// URL")
        if settings.queue_backend == "amqp":
            if not settings.amqp_url:
                problems.append("AMQP_URL: required when QUEUE_BACKEND=amqp")
            if not settings.amqp_management_url:
                problems.append("AMQP_MANAGEMENT_URL: required when QUEUE_BACKEND=amqp")
        if settings.queue_backend == "sqs" and not settings.claim_check_bucket:
            problems.append("CLAIM_CHECK_BUCKET: required when QUEUE_BACKEND=sqs")
        if problems:
            raise SettingsError("invalid settings: " + "; ".join(problems), problems=problems)
        return settings


def cidr_list(value: str) -> tuple[str, ...]:
    """`10.244.0.0/16, 10.96.0.0/12` → normalized IPv4 networks; ValueError names a bad one."""
    networks = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError as exc:
            raise ValueError(f"not an IPv4 range like 10.244.0.0/16: {item!r}") from exc
        if network.version != 4:
            raise ValueError(f"only IPv4 ranges are supported: {item!r}")
        networks.append(str(network))
    return tuple(networks)


def is_amqp_url(value: str) -> bool:
    parsed = urlparse(value)
    return parsed.scheme in ("amqp", "amqps") and bool(parsed.hostname)


def _is_dns_label(value: str) -> bool:
    import re

    return bool(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value))


def _redact_url(value: str) -> str:
    parsed = urlparse(value)
    if parsed.password:
        return value.replace(parsed.password, "***")
    return value
