"""What every function does with one CloudEvent: parse, authorize, dedupe, dispatch, flush.

`functions/<name>/main.py` builds one `FunctionRuntime` (lazily, from the environment) and
calls `handle`; `orchestrator invoke` and the tests call it the same way, in-process.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cloudevents.http import CloudEvent
from redis import Redis
from redis.exceptions import RedisError

from shared import keys, store
from shared.clock import Clock, SystemClock
from shared.errors import InvalidEvent, OrchestratorError, TemporaryError
from shared.events import (
    PAYLOADS,
    IncomingEvent,
    OutgoingEvent,
    Payload,
    make_event,
    parse_event,
)
from shared.events.types import CONSUMES, TICK, short
from shared.model import flows
from shared.model.policy import Policy, load_policy
from shared.runtime import metrics, outbox, tick_lease
from shared.runtime.auth import AnsweredAsUnknown, Authorizer, Principal
from shared.runtime.idempotency import Once, Write
from shared.runtime.outbox import EventSender, HttpSender, NullSender
from shared.settings import Settings

log = logging.getLogger(__name__)

S = TypeVar("S")


@dataclass
class Context(Generic[S]):
    """Everything a handler may use for one event; handlers hold no other state."""

    function: str
    tag: str
    redis: Redis
    settings: Settings
    policy: Policy
    clock: Clock
    services: S
    event: IncomingEvent
    principal: Principal
    _emitted: int = field(default=0, repr=False)

    @property
    def source(self) -> str:
        return f"/component-orchestrator/{self.function}"

    @property
    def once(self) -> Once:
        return Once.for_event(self.redis, self.tag, self.event, self.principal.scope)

    def new_event(
        self,
        event_type: str,
        payload: Payload | dict[str, Any],
        *,
        tenant: str | None = None,
        flow_id: str | None = None,
        run_id: str | None = None,
        event_id: str | None = None,
    ) -> OutgoingEvent:
        """An event caused by this one; its id is the same on every redelivery."""
        self._emitted += 1
        return make_event(
            event_type,
            payload,
            event_id=event_id or f"{self.once.event_id_prefix}-{self._emitted}",
            source=self.source,
            time=self.clock.now(),
            tenant=tenant,
            flow_id=flow_id,
            run_id=run_id,
        )

    def commit(self, write: Write | None, events: list[OutgoingEvent] | tuple[()] = ()) -> bool:
        """State change + dedupe key + outbox in one transaction; False if already handled."""
        return self.once.commit(write, events)


# A handler takes the context and, when it needs it, the payload: `def on_x(ctx, flow:
# FlowDocument)`. That annotation is the one place its payload type is declared; the runtime
# checks the parsed payload against it before the call, so handlers neither assert nor cast.
Handler = Callable[[Context[S], Any], None] | Callable[[Context[S]], None]
ServicesFactory = Callable[[Settings, Clock, Redis], S]


@dataclass(frozen=True)
class Dispatch(Generic[S]):
    """A handler with the payload type it declared (None: it takes no payload)."""

    handler: Handler[S]
    payload_type: type[Payload] | None

    def __call__(self, ctx: Context[S]) -> None:
        payload = ctx.event.payload
        if self.payload_type is None:
            self.handler(ctx)  # type: ignore[call-arg]
            return
        if not isinstance(payload, self.payload_type):
            raise InvalidEvent(
                f"data: {ctx.event.type!r} needs a {self.payload_type.__name__} payload",
                problems=["data: wrong payload"],
            )
        self.handler(ctx, payload)  # type: ignore[call-arg]


def declared_payload(handler: Callable[..., None], event_type: str) -> type[Payload] | None:
    """The payload type `handler` declares, checked against the catalogue for `event_type`."""
    parameters = list(inspect.signature(handler, eval_str=True).parameters.values())
    wanted = [p for p in parameters[1:] if p.default is inspect.Parameter.empty]
    if not wanted:
        return None
    declared = wanted[0].annotation
    catalogued = PAYLOADS.get(event_type)
    if not (isinstance(declared, type) and issubclass(declared, Payload)):
        raise TypeError(f"{handler.__qualname__}: its payload parameter needs a Payload type")
    if catalogued is not None and not issubclass(catalogued, declared):
        raise TypeError(
            f"{handler.__qualname__} takes {declared.__name__}, but {short(event_type)} "
            f"carries {catalogued.__name__}"
        )
    return declared


@dataclass(frozen=True)
class FunctionSpec(Generic[S]):
    name: str
    tag: str
    handlers: Mapping[str, Handler[S]]
    build_services: ServicesFactory[S]
    # How long one tick of this function may work (its lease outlives that by a margin).
    tick_seconds: Callable[[Settings], float] = field(default=lambda _settings: 0.0)
    dispatch: Mapping[str, Dispatch[S]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        table = {
            event_type: Dispatch(handler, declared_payload(handler, event_type))
            for event_type, handler in self.handlers.items()
        }
        object.__setattr__(self, "dispatch", table)


@dataclass(frozen=True)
class Outcome:
    event_type: str
    duplicate: bool
    flushed: int


class FunctionRuntime(Generic[S]):
    def __init__(
        self,
        spec: FunctionSpec[S],
        *,
        settings: Settings,
        redis: Redis,
        clock: Clock,
        policy: Policy,
        sender: EventSender,
        authorizer: Authorizer,
        services: S,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.redis = redis
        self.clock = clock
        self.policy = policy
        self.sender = sender
        self.authorizer = authorizer
        self.services = services
        self.consumes = CONSUMES[spec.name]
        tag = spec.tag
        metrics.OUTBOX_BACKLOG.watch(spec.name, lambda: outbox.pending(redis, (tag,)))

    @classmethod
    def from_env(
        cls,
        spec: FunctionSpec[S],
        env: Mapping[str, str] | None = None,
        *,
        clock: Clock | None = None,
        sender: EventSender | None = None,
    ) -> FunctionRuntime[S]:
        """Settings, policy and clients from the environment; refuses to start on bad values."""
        settings = Settings.from_env(os.environ if env is None else env)
        clock = clock or SystemClock()
        redis = store.connect(settings.redis_url, settings.redis_mode)
        store.check_eviction_policy(redis)
        if sender is None:
            sender = (
                HttpSender(
                    settings.k_sink,
                    key=settings.orchestrator_key,
                    sender_name=spec.name,
                    clock=clock,
                )
                if settings.k_sink
                else NullSender()
            )
        return cls(
            spec,
            settings=settings,
            redis=redis,
            clock=clock,
            policy=load_policy(settings.policy_file),
            sender=sender,
            authorizer=Authorizer(
                settings, clock, flow_tenant=lambda flow_id: flows.tenant_of(redis, flow_id)
            ),
            services=spec.build_services(settings, clock, redis),
        )

    def handle(self, cloudevent: CloudEvent) -> Outcome:
        """Handles one event; raises OrchestratorError subclasses for the adapter to map."""
        started = time.perf_counter()
        outcome = "error"
        try:
            result = self._handle(cloudevent)
            outcome = "duplicate" if result.duplicate else "ok"
            return result
        except OrchestratorError as error:
            outcome = str(error.status)
            raise
        finally:
            metrics.observe_handled(
                self.spec.name,
                str(cloudevent.get("type") or "unknown"),
                outcome,
                time.perf_counter() - started,
            )

    def _handle(self, cloudevent: CloudEvent) -> Outcome:
        event = parse_event(cloudevent, self.consumes)
        handler = self.spec.dispatch.get(event.type)
        if handler is None:
            raise InvalidEvent(f"type: {self.spec.name} has no handler for {event.type!r}")
        try:
            try:
                principal = self.authorizer.authorize(cloudevent, event.payload)
            except AnsweredAsUnknown as hidden:
                log.info("%s id=%s: %s, answered as unknown", short(event.type), event.id, hidden)
                return Outcome(event_type=event.type, duplicate=False, flushed=0)
            if event.type == TICK:
                return self._tick(event, handler, principal)
            once = Once.for_event(self.redis, self.spec.tag, event, principal.scope)
            duplicate = once.done()
            if duplicate:
                log.info("duplicate %s id=%s: already handled", short(event.type), event.id)
            else:
                handler(self._context(event, principal))
            if self.settings.redis_wait_replicas:  # answered only once replicas hold it
                store.wait_for_replicas(
                    self.redis,
                    keys.replication_probe(self.spec.tag),
                    self.settings.redis_wait_replicas,
                    self.settings.redis_wait_timeout_seconds,
                )
            flushed = outbox.flush(self.redis, self.sender, (self.spec.tag,))
        except RedisError as exc:
            raise TemporaryError("redis unavailable") from exc
        return Outcome(event_type=event.type, duplicate=duplicate, flushed=flushed)

    def _tick(self, event: IncomingEvent, handler: Dispatch[S], principal: Principal) -> Outcome:
        """Single-flight: a tick that finds another one working answers at once (200)."""
        hold = self.spec.tick_seconds(self.settings)
        with tick_lease.single_flight(self.redis, self.spec.tag, hold) as holder:
            if not holder:
                log.info("tick id=%s: another tick of %s is working", event.id, self.spec.name)
                return Outcome(event_type=event.type, duplicate=True, flushed=0)
            handler(self._context(event, principal))
            flushed = outbox.flush(self.redis, self.sender, keys.TAGS)
        return Outcome(event_type=event.type, duplicate=False, flushed=flushed)

    def _context(self, event: IncomingEvent, principal: Principal) -> Context[S]:
        return Context(
            function=self.spec.name,
            tag=self.spec.tag,
            redis=self.redis,
            settings=self.settings,
            policy=self.policy,
            clock=self.clock,
            services=self.services,
            event=event,
            principal=principal,
        )


def lazy_runtime(spec: FunctionSpec[S]) -> Callable[[], FunctionRuntime[S]]:
    """Checks the settings and Redis' maxmemory-policy now (a bad value stops the process at
    start, naming the variable; an unreachable Redis does not) and builds clients on first
    use, once per process."""
    import threading

    settings = Settings.from_env(os.environ)
    store.check_at_start(settings.redis_url, settings.redis_mode)

    lock = threading.Lock()
    built: list[FunctionRuntime[S]] = []

    def get() -> FunctionRuntime[S]:
        if not built:
            with lock:
                if not built:
                    built.append(FunctionRuntime.from_env(spec))
        return built[0]

    return get
