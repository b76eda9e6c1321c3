"""The four real functions in one process, on simulated time (the headless demo, and tests).

Everything that decides is the real code: each function is a `FunctionRuntime` with its real
handlers, state is in a real Redis, events are routed by the Triggers in knative/base with
the Broker's retry table (shared.local.broker). Only what is outside the orchestrator is simulated:
- the cluster: `SimulatedCluster` keeps the Deployments deploy applies and reports them Ready;
- the component workers' time: `SimulatedWorkers` run the real step worker (shared.worker.main) on
  the real step queues, one message per replica at a time, each held for the node's
  `fields.seconds` of simulated time (the demo component's own sleep is left out);
- time: a FakeClock the caller advances; ticks come when the caller says.
Auth is off here (no IAM); our own events are signed with ORCHESTRATOR_KEY as on the wire.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cloudevents.http import CloudEvent
from redis import Redis

from shared.adapters.redis_streams import RedisStreamsQueue
from shared.clock import FakeClock
from shared.deployment.services import DeployServices, NoFlowTokens
from shared.deployment.worker_settings import WorkerSettings
from shared.errors import OrchestratorError
from shared.events import OutgoingEvent
from shared.events import types as t
from shared.handlers import deploy, flow_start, policy_check, step_execute
from shared.local.broker import DeliveryPolicy, is_retryable, load_topology
from shared.local.demo import components as demo_components
from shared.local.run import knative_dir
from shared.model import flows
from shared.model.policy import Policy
from shared.ports.components import ComponentRepository
from shared.ports.driver import (
    MANAGED_SELECTOR,
    Manifest,
    ObservedObject,
    Readiness,
    page_by_name,
)
from shared.ports.step_message import Delivery
from shared.runtime.auth import Authorizer
from shared.runtime.function import FunctionRuntime, FunctionSpec
from shared.security.tokens import keyed_event_id, sign_internal
from shared.settings import Settings
from shared.worker.main import ComponentFunction, Worker, WorkerConfig, load_function

log = logging.getLogger(__name__)

SPECS: dict[str, FunctionSpec[Any]] = {
    t.FLOW_START: flow_start.SPEC,
    t.DEPLOY: deploy.SPEC,
    t.STEP_EXECUTE: step_execute.SPEC,
    t.POLICY_CHECK: policy_check.SPEC,
}
TICK_ORDER = (t.POLICY_CHECK, t.DEPLOY, t.FLOW_START, t.STEP_EXECUTE)
# Seconds between ticks per function. The local clock ticks every second; deploy's tick only
# reconciles and checks readiness, which the simulated cluster answers at once, so it ticks
# less often here (each tick costs a few Redis round trips per flow).
TICK_EVERY = {t.POLICY_CHECK: 1, t.DEPLOY: 5, t.FLOW_START: 1, t.STEP_EXECUTE: 1}
MAX_DELIVERIES_PER_PUMP = 200_000  # a runaway loop stops instead of hanging the demo


# --------------------------------------------------------------------------- the bus
@dataclass(order=True)
class _Retry:
    due: float
    seq: int
    function: str = field(compare=False)
    event: CloudEvent = field(compare=False)
    attempt: int = field(compare=False)


@dataclass
class BusStats:
    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    rejected: dict[int, int] = field(default_factory=dict)  # status → count (4xx, 5xx)


class _BusSender:
    """The EventSender of one function: emitted events go onto the bus (K_SINK)."""

    def __init__(self, bus: Bus, function: str) -> None:
        self._bus, self._function = bus, function

    def send(self, event: OutgoingEvent) -> None:
        self._bus.emitted(self._function, event)


class Bus:
    """The Broker, in process: routes by the Triggers, retries like Knative, dead-letters."""

    def __init__(
        self,
        clock: FakeClock,
        key: str,
        *,
        delivery: DeliveryPolicy | None = None,
        observe: Callable[[OutgoingEvent], None] | None = None,
    ) -> None:
        self.clock = clock
        self._key = key
        topology = load_topology(knative_dir())
        self.routes: dict[str, list[str]] = {}
        for trigger in topology.triggers:
            event_type = trigger.filter.get("type")
            if event_type:
                self.routes.setdefault(event_type, []).append(trigger.subscriber)
        self.delivery = delivery or DeliveryPolicy()
        self.runtimes: dict[str, FunctionRuntime[Any]] = {}
        self.stats = BusStats()
        self._queue: deque[tuple[str, CloudEvent, int]] = deque()
        self._retries: list[_Retry] = []
        self._seq = itertools.count()
        self._observe = observe

    def emitted(self, function: str, event: OutgoingEvent) -> None:
        """A function's outbox sent an event: sign it as that function and route it."""
        if self._observe is not None:
            self._observe(event)
        token = sign_internal(self._key, function, self.clock, event_type=event.type)
        wire = replace(event, id=keyed_event_id(self._key, event.source, event.id))
        self.publish(wire.to_cloudevent(authtoken=token))

    def publish(self, event: CloudEvent) -> None:
        for function in self.routes.get(str(event["type"]), []):
            if function in self.runtimes:
                self._queue.append((function, event, 0))

    def deliver_to(self, function: str, event: CloudEvent) -> None:
        self._queue.append((function, event, 0))

    def pump(self) -> int:
        """Delivers until nothing is left that is due now; returns the deliveries made."""
        done = 0
        now = self.clock.now()
        while self._retries and self._retries[0].due <= now:
            retry = heapq.heappop(self._retries)
            self._queue.append((retry.function, retry.event, retry.attempt))
        while self._queue:
            function, event, attempt = self._queue.popleft()
            self._deliver(function, event, attempt)
            done += 1
            if done >= MAX_DELIVERIES_PER_PUMP:
                log.warning("bus: %d deliveries in one pump, stopping here", done)
                break
        return done

    def _deliver(self, function: str, event: CloudEvent, attempt: int) -> None:
        try:
            self.runtimes[function].handle(event)
            self.stats.delivered += 1
            return
        except OrchestratorError as error:
            status = error.status
            retry_after = getattr(error, "retry_after", None)
        except Exception:  # a bug in a handler: 500, as functions-framework would answer
            log.exception("%s failed on %s", function, t.short(str(event["type"])))
            status, retry_after = 500, None
        self.stats.rejected[status] = self.stats.rejected.get(status, 0) + 1
        if is_retryable(status) and attempt < self.delivery.retry:
            delay = self.delivery.delay(attempt + 1, status, retry_after)
            self.stats.retried += 1
            heapq.heappush(
                self._retries,
                _Retry(self.clock.now() + delay, next(self._seq), function, event, attempt + 1),
            )
        else:
            self.stats.dead_lettered += 1

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._retries)


# --------------------------------------------------------------------------- the cluster
class SimulatedCluster:
    """A DeployDriver over an in-memory cluster where every Deployment is Ready at once."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Manifest] = {}

    def apply(self, manifest: Manifest) -> None:
        self.objects[(manifest["kind"], manifest["metadata"]["name"])] = manifest

    def list_managed(self, selector: str | None = None) -> list[ObservedObject]:
        found = []
        for (kind, name), manifest in self.objects.items():
            meta = manifest["metadata"]
            labels = dict(meta.get("labels") or {})
            if not _selects(selector, labels):
                continue
            replicas = manifest.get("spec", {}).get("replicas") if kind == "Deployment" else None
            found.append(
                ObservedObject(
                    kind=kind,
                    name=name,
                    labels=labels,
                    annotations=dict(meta.get("annotations") or {}),
                    replicas=None if replicas is None else int(replicas),
                )
            )
        return found

    def observe(self, kind: str, name: str) -> ObservedObject | None:
        found = [o for o in self.list_managed() if (o.kind, o.name) == (kind, name)]
        return found[0] if found else None

    def list_managed_page(
        self, kind: str, *, limit: int, token: str = ""
    ) -> tuple[list[ObservedObject], str]:
        return page_by_name(self.list_managed(), kind, limit=limit, token=token)

    def readiness(self, selector: str | None = None) -> list[Readiness]:
        return [
            Readiness(name=o.name, desired=o.replicas or 0, ready=o.replicas or 0)
            for o in self.list_managed(selector)
            if o.kind == "Deployment"
        ]

    def delete(self, kind: str, name: str) -> bool:
        return self.objects.pop((kind, name), None) is not None

    def close(self) -> None:
        return None

    def deployments(self) -> list[tuple[Manifest, dict[str, str]]]:
        """Each Deployment with the environment of its step Secret (decoded)."""
        result = []
        for (kind, name), manifest in sorted(self.objects.items()):
            if kind != "Deployment":
                continue
            secret = self.objects.get(("Secret", name), {})
            env = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
            result.append((manifest, env))
        return result


def _selects(selector: str | None, labels: Mapping[str, str]) -> bool:
    for term in filter(None, (MANAGED_SELECTOR + "," + (selector or "")).split(",")):
        name, _, value = term.partition("=")
        if labels.get(name) != value:
            return False
    return True


# --------------------------------------------------------------------------- the workers
@dataclass(order=True)
class _Busy:
    done_at: float
    seq: int
    deployment: str = field(compare=False)
    delivery: Delivery = field(compare=False)


class _BusStepSender:
    """The workers' K_SINK: step events go to the bus like any event to the broker."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    def send(self, event: CloudEvent) -> None:
        self._bus.publish(event)


def simulated_function(entrypoint: str, name: str) -> ComponentFunction:
    """The component a worker runs; the demo's own without its sleep (time is simulated)."""
    if entrypoint == demo_components.__name__:
        return demo_components.produce
    return load_function(entrypoint, name)


class SimulatedWorkers:
    """The real step worker (shared.worker.main.Worker) per Deployment, on simulated time: each
    replica takes one message, holds it for the node's `fields.seconds`, then the worker
    handles it (runs the component, sends step.completed/failed, acknowledges)."""

    def __init__(self, redis: Redis, cluster: SimulatedCluster, bus: Bus, clock: FakeClock) -> None:
        self.queue = RedisStreamsQueue(redis)
        self.cluster, self.clock = cluster, clock
        self.sender = _BusStepSender(bus)
        self.workers: dict[str, Worker] = {}
        self._busy: list[_Busy] = []
        self._seq = itertools.count()
        self.completed = 0

    def _worker(self, name: str, env: dict[str, str]) -> Worker:
        if name not in self.workers:
            # The queue is handed in below: the Secret has no REDIS_URL of its own here (no
            # ACL users in the simulation), so name the in-process one for the config check.
            config = WorkerConfig.from_env({"REDIS_URL": "redis://in-process", **env})
            self.workers[name] = Worker(
                config,
                self.queue,
                self.sender,
                simulated_function(config.entrypoint, config.function),
                consumer=name,
                clock=self.clock,
                wait_seconds=0,
            )
        return self.workers[name]

    def step(self) -> None:
        """Finishes what is done by now, then takes new messages where replicas are free."""
        now = self.clock.now()
        deployments = {m["metadata"]["name"]: (m, env) for m, env in self.cluster.deployments()}
        while self._busy and self._busy[0].done_at <= now:
            busy = heapq.heappop(self._busy)
            if busy.deployment in deployments:  # else deleted meanwhile: reclaimed later
                self._finish(busy.deployment, deployments[busy.deployment][1], busy.delivery)
        in_use: dict[str, int] = {}
        for busy in self._busy:
            in_use[busy.deployment] = in_use.get(busy.deployment, 0) + 1
        for name, (manifest, env) in deployments.items():
            free = int(manifest["spec"].get("replicas") or 0) - in_use.get(name, 0)
            if free <= 0 or not env.get("STEP_QUEUE"):
                continue
            worker = self._worker(name, env)
            seconds = float(worker.config.fields.get("seconds", 0) or 0)
            received = self.queue.receive(
                worker.config.queue, name, max_messages=free, wait_seconds=0
            )
            for delivery in received:
                if seconds <= 0:
                    self._finish(name, env, delivery)
                else:
                    heapq.heappush(
                        self._busy, _Busy(now + seconds, next(self._seq), name, delivery)
                    )

    def _finish(self, name: str, env: dict[str, str], delivery: Delivery) -> None:
        if self._worker(name, env).handle(delivery):
            self.completed += 1


# --------------------------------------------------------------------------- the system
class InProcessSystem:
    """The four functions wired through the bus; `send`, `tick` and `run_for` drive it."""

    def __init__(
        self,
        redis: Redis,
        clock: FakeClock,
        policy: Policy,
        settings: Settings,
        components: ComponentRepository,
        *,
        observe: Callable[[OutgoingEvent], None] | None = None,
    ) -> None:
        self.redis, self.clock, self.policy, self.settings = redis, clock, policy, settings
        self.bus = Bus(clock, settings.orchestrator_key, observe=observe)
        self.cluster = SimulatedCluster()
        self.workers = SimulatedWorkers(redis, self.cluster, self.bus, clock)
        authorizer = Authorizer(
            settings, clock, flow_tenant=lambda flow_id: flows.tenant_of(redis, flow_id)
        )
        services: dict[str, Any] = {
            t.FLOW_START: flow_start.Services(work_through_seconds=0.0),
            t.DEPLOY: DeployServices(
                driver=self.cluster,
                components=components,
                tokens=NoFlowTokens(),
                worker=WorkerSettings.from_settings(settings),
                ready_wait_seconds=0.0,
            ),
            t.STEP_EXECUTE: step_execute.build_services(settings, clock, redis),
            t.POLICY_CHECK: policy_check.SPEC.build_services(settings, clock, redis),
        }
        for name, spec in SPECS.items():
            self.bus.runtimes[name] = FunctionRuntime(
                spec,
                settings=settings,
                redis=redis,
                clock=clock,
                policy=policy,
                sender=_BusSender(self.bus, name),
                authorizer=authorizer,
                services=services[name],
            )

    def send(
        self,
        event_type: str,
        data: Any,
        *,
        source: str = "/demo",
        event_id: str | None = None,
        **extensions: str,
    ) -> None:
        """An event from outside (Flow Repository, webhook), as the broker would receive it."""
        attributes = {
            "type": event_type,
            "source": source,
            "datacontenttype": "application/json",
            **{k: v for k, v in extensions.items() if v},
        }
        if event_id:
            attributes["id"] = event_id
        self.bus.publish(CloudEvent(attributes, data))

    def tick(self, only_due: bool = False) -> None:
        """A tick to every function (`only_due`: those whose TICK_EVERY divides the second)."""
        second = int(self.clock.now())
        for function in TICK_ORDER:
            if not only_due or second % TICK_EVERY[function] == 0:
                event = CloudEvent({"type": t.TICK, "source": "/demo/clock"}, {})
                self.bus.deliver_to(function, event)

    def settle(self, rounds: int = 20) -> None:
        """Delivers and lets workers pick up until nothing moves (at the current time)."""
        for _ in range(rounds):
            moved = self.bus.pump()
            self.workers.step()
            moved += self.bus.pump()
            if not moved:
                return

    def run_for(self, seconds: int, *, each_second: Callable[[float], None] | None = None) -> None:
        """`seconds` simulated seconds: advance, tick, deliver, work; then `each_second`."""
        for _ in range(seconds):
            self.clock.advance(1.0)
            self.tick(only_due=True)
            self.settle()
            if each_second is not None:
                each_second(self.clock.now())
