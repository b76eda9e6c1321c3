"""The local broker of `make run` (docs/architecture.md §9): Knative's Broker semantics on one
machine.

- reads the Broker and Triggers in `knative/` (subscriber `ref.name` → a local URL),
- accepts CloudEvents (structured or binary) and answers 202 before delivering,
- delivers each event in binary mode to every Trigger whose filter matches, one thread pool per
  subscriber, so a slow subscriber does not hold up the others,
- retries 404/408/409/429/5xx, timeouts and refused connections with the Broker's backoff
  (exponential: backoffDelay * 2^(retry-1)); for 429/503, when the Broker sets `retryAfterMax`,
  the larger of that and `Retry-After` (capped by it; without it Retry-After is ignored, as in
  Knative); never retries other 4xx,
- then appends the event (tokens removed) to the dead-letter file.
Every delivery prints one line (type, id, target, status), never a token.
"""

from __future__ import annotations

import email.utils
import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import requests
import yaml
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from shared.events.types import TICK, short
from shared.runtime.cloudevent_server import CloudEventServer
from shared.runtime.dead_letters import DeadLetter, DeadLetterStore, describe, event_record

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({404, 408, 409, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})
BACKOFF_POLICIES = ("exponential", "linear")
_STOPPED = "broker stopped before the next retry"


# --------------------------------------------------------------------------- delivery policy
@dataclass(frozen=True)
class DeliveryPolicy:
    """Knative's DeliverySpec, plus the two alpha fields as local caps."""

    retry: int = 8
    backoff_policy: str = "exponential"
    backoff_delay: float = 0.5
    # Knative honours Retry-After only up to the Broker's `retryAfterMax` and ignores it when
    # that is not set (feature delivery-retryafter); so does this broker.
    retry_after_max: float | None = None
    timeout: float = 30.0

    def backoff(self, retry: int) -> float:
        """Delay before the `retry`-th retry (1-based)."""
        if self.backoff_policy == "linear":
            return self.backoff_delay * retry
        return float(self.backoff_delay * 2 ** (retry - 1))

    def delay(self, retry: int, status: int | None, retry_after: float | None) -> float:
        """Backoff, or for 429/503 the larger of it and Retry-After (capped by retryAfterMax;
        without retryAfterMax, Retry-After is ignored as Knative does)."""
        base = self.backoff(retry)
        if (
            status in RETRY_AFTER_STATUSES
            and retry_after is not None
            and self.retry_after_max is not None
        ):
            return max(base, min(retry_after, self.retry_after_max))
        return base


def is_retryable(status: int | None) -> bool:
    """Knative's table: no answer (timeout, refused), 404, 408, 409, 429 and 5xx."""
    return status is None or status in RETRYABLE_STATUSES or status >= 500


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def parse_duration(value: str) -> float:
    """An ISO 8601 duration as Knative writes it (`PT0.5S`, `PT2M`, `PT1H30M`) → seconds."""
    import re

    match = re.fullmatch(
        r"P(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)", value
    )
    if not match or value in ("P", "PT"):
        raise ValueError(f"not an ISO 8601 duration like PT0.5S: {value!r}")
    hours, minutes, seconds = (float(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def delivery_from_spec(spec: Mapping[str, Any] | None, base: DeliveryPolicy) -> DeliveryPolicy:
    """A Broker's or Trigger's `spec.delivery` over `base`."""
    if not spec:
        return base
    changes: dict[str, Any] = {}
    if "retry" in spec:
        changes["retry"] = int(spec["retry"])
    if "backoffPolicy" in spec:
        if spec["backoffPolicy"] not in BACKOFF_POLICIES:
            raise ValueError(
                f"backoffPolicy must be exponential or linear: {spec['backoffPolicy']!r}"
            )
        changes["backoff_policy"] = str(spec["backoffPolicy"])
    if "backoffDelay" in spec:
        changes["backoff_delay"] = parse_duration(str(spec["backoffDelay"]))
    if "retryAfterMax" in spec:
        changes["retry_after_max"] = parse_duration(str(spec["retryAfterMax"]))
    if "timeout" in spec:
        changes["timeout"] = parse_duration(str(spec["timeout"]))
    return replace(base, **changes)


# --------------------------------------------------------------------------- triggers
@dataclass(frozen=True)
class Trigger:
    name: str
    broker: str
    subscriber: str  # the ref name (a Knative Service) or a URI
    filter: Mapping[str, str] = field(default_factory=dict)
    delivery: Mapping[str, Any] | None = None

    def matches(self, attributes: Mapping[str, object]) -> bool:
        """Knative's attribute filter: every listed attribute equals exactly (empty = all)."""
        return all(str(attributes.get(k, "")) == v for k, v in self.filter.items())


@dataclass(frozen=True)
class Topology:
    """What the manifests say: the brokers' delivery specs and the triggers."""

    brokers: Mapping[str, Mapping[str, Any]]
    triggers: tuple[Trigger, ...]


def load_topology(root: Path, *more: Path) -> Topology:
    """Every Broker and Trigger in the YAML files under `root` and `more` (recursively)."""
    brokers: dict[str, Mapping[str, Any]] = {}
    triggers: dict[str, Trigger] = {}
    paths = [
        p for folder in (root, *more) for p in (*folder.rglob("*.yaml"), *folder.rglob("*.yml"))
    ]
    for path in sorted(paths):
        for document in yaml.safe_load_all(path.read_text()):
            if not isinstance(document, dict):
                continue
            kind = document.get("kind")
            name = str((document.get("metadata") or {}).get("name", ""))
            spec = document.get("spec") or {}
            if kind == "Broker":
                brokers[name] = spec.get("delivery") or {}
            elif kind == "Trigger":
                if name in triggers:
                    raise ValueError(f"{path}: Trigger {name!r} is defined twice")
                triggers[name] = _trigger(path, name, spec)
    return Topology(brokers=brokers, triggers=tuple(triggers.values()))


def _trigger(path: Path, name: str, spec: Mapping[str, Any]) -> Trigger:
    if "filters" in spec:
        raise ValueError(f"{path}: Trigger {name!r}: only `filter.attributes` is supported")
    subscriber = spec.get("subscriber") or {}
    target = (subscriber.get("ref") or {}).get("name") or subscriber.get("uri")
    if not target:
        raise ValueError(f"{path}: Trigger {name!r} has no subscriber ref or uri")
    attributes = (spec.get("filter") or {}).get("attributes") or {}
    return Trigger(
        name=name,
        broker=str(spec.get("broker", "default")),
        subscriber=str(target),
        filter={str(k): str(v) for k, v in attributes.items()},
        delivery=spec.get("delivery"),
    )


# --------------------------------------------------------------------------- the broker
@dataclass(frozen=True)
class Attempt:
    status: int | None  # None: no answer (timeout, connection refused)
    reason: str
    delay_after: float | None = None  # the wait before the next attempt, if any


@dataclass(frozen=True)
class Delivery:
    trigger: str
    subscriber: str
    event_type: str
    event_id: str
    attempts: tuple[Attempt, ...]
    delivered: bool

    @property
    def status(self) -> int | None:
        return self.attempts[-1].status if self.attempts else None


@dataclass
class _Pending:
    """One event on its way to one subscriber, across attempts."""

    trigger: Trigger
    url: str
    policy: DeliveryPolicy
    event: CloudEvent
    headers: dict[str, str]
    body: Any
    future: Future[Delivery]
    attempts: list[Attempt] = field(default_factory=list)


class RetryTimer:
    """One thread that runs callbacks when they are due (retries wait here, not in pools)."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._count = 0
        self._closed = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="broker-retries", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        with self._condition:
            if self._closed:
                run_now = True
            else:
                run_now = False
                self._count += 1
                heapq.heappush(self._due, (time.monotonic() + delay, self._count, callback))
                self._condition.notify()
        if run_now:
            callback()

    def close(self) -> None:
        """Runs every pending callback at once (they see the broker stopping) and ends."""
        with self._condition:
            self._closed = True
            pending = [callback for _, _, callback in sorted(self._due)]
            self._due.clear()
            self._condition.notify()
        for callback in pending:
            callback()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._closed and (not self._due or self._due[0][0] > time.monotonic()):
                    timeout = self._due[0][0] - time.monotonic() if self._due else None
                    self._condition.wait(timeout)
                if self._closed:
                    return
                _, _, callback = heapq.heappop(self._due)
            try:
                callback()
            except Exception:
                log.exception("broker retry failed")


Report = Callable[[str], None]
Wait = Callable[[float], bool]  # waits; True when the broker is stopping


def _print_line(line: str) -> None:
    print(line, flush=True)


class Broker:
    """Routes each accepted event to every matching Trigger's subscriber."""

    def __init__(
        self,
        topology: Topology,
        subscribers: Mapping[str, str],
        dead_letters: DeadLetterStore,
        *,
        broker: str | None = None,
        policy: DeliveryPolicy | None = None,
        overrides: Mapping[str, Any] | None = None,
        report: Report = _print_line,
        quiet_types: Iterable[str] = (TICK,),
        workers_per_subscriber: int = 8,
        wait: Wait | None = None,
        now: Callable[[], float] = time.time,
        session: requests.Session | None = None,
    ) -> None:
        names = list(topology.brokers) or ["default"]
        self.name = broker or names[0]
        self.policy = delivery_from_spec(
            topology.brokers.get(self.name), policy or DeliveryPolicy()
        )
        self._overrides = dict(overrides or {})
        self.policy = replace(self.policy, **self._overrides)
        self.dead_letters = dead_letters
        self.report = report
        self.quiet_types = frozenset(quiet_types)
        self.now = now
        self._stopping = threading.Event()
        self._custom_wait: Wait | None = wait
        self._timer = RetryTimer()
        self._session = session or requests.Session()
        self.routes: list[tuple[Trigger, str, DeliveryPolicy]] = []
        for trigger in topology.triggers:
            if trigger.broker != self.name:
                continue
            url = subscribers.get(trigger.subscriber)
            if url is None and "://" in trigger.subscriber:
                url = trigger.subscriber
            if url is None:
                log.warning(
                    "trigger %s: no local URL for %r, skipped", trigger.name, trigger.subscriber
                )
                continue
            route_policy = replace(
                delivery_from_spec(trigger.delivery, self.policy), **self._overrides
            )
            self.routes.append((trigger, url, route_policy))
        self._pools = {
            subscriber: ThreadPoolExecutor(workers_per_subscriber, thread_name_prefix=subscriber)
            for subscriber in sorted({trigger.subscriber for trigger, _, _ in self.routes})
        }

    # --- ingress -------------------------------------------------------------------------------
    def accept(self, event: CloudEvent) -> int:
        """The ingress callback: queue the deliveries, answer 202 at once."""
        self.publish(event)
        return 202

    def publish(self, event: CloudEvent) -> list[Future[Delivery]]:
        if self._stopping.is_set():
            raise RuntimeError("broker is stopping")
        attributes = event.get_attributes()
        futures: list[Future[Delivery]] = []
        for trigger, url, policy in self.routes:
            if trigger.matches(attributes):
                futures.append(self._start(trigger, url, policy, event))
        if not futures and str(attributes.get("type")) != TICK:
            self.report(
                f"no trigger   {short(str(attributes.get('type')))} id={attributes.get('id')}"
            )
        return futures

    # --- delivery ------------------------------------------------------------------------------
    def deliver(
        self, trigger: Trigger, url: str, policy: DeliveryPolicy, event: CloudEvent
    ) -> Delivery:
        """Delivers one event to one subscriber, retries included; blocks until done."""
        return self._start(trigger, url, policy, event).result()

    def _start(
        self, trigger: Trigger, url: str, policy: DeliveryPolicy, event: CloudEvent
    ) -> Future[Delivery]:
        headers, body = to_binary(event)
        pending = _Pending(trigger, url, policy, event, dict(headers), body, Future())
        self._submit(pending)
        return pending.future

    def _submit(self, pending: _Pending) -> None:
        try:
            self._pools[pending.trigger.subscriber].submit(self._try_once, pending)
        except RuntimeError:  # the pool is shut down: the broker is stopping
            self._try_once(pending)

    def _try_once(self, pending: _Pending) -> None:
        """One attempt. A retry is scheduled on the timer, never slept in a pool thread, so
        subscribers answering 429 with a long Retry-After cannot hold every thread."""
        attempts = pending.attempts
        if attempts and self._stopping.is_set():
            attempts.append(Attempt(None, _STOPPED))
            self._finish(pending, delivered=False)
            return
        status, reason, retry_after = self._post(
            pending.url, pending.headers, pending.body, pending.policy.timeout
        )
        retries_done = len(attempts)
        can_retry = is_retryable(status) and retries_done < pending.policy.retry
        delay = pending.policy.delay(retries_done + 1, status, retry_after) if can_retry else None
        attempts.append(Attempt(status, reason, delay))
        delivered = status is not None and 200 <= status < 300
        self._report(pending.trigger, pending.event, attempts[-1], len(attempts), delivered)
        if delivered or delay is None:
            self._finish(pending, delivered)
        elif self._custom_wait is not None:
            if self._custom_wait(delay) or self._stopping.is_set():
                attempts.append(Attempt(None, _STOPPED))
                self._finish(pending, delivered=False)
            else:
                self._submit(pending)
        else:
            self._timer.call_later(delay, lambda: self._submit(pending))

    def _finish(self, pending: _Pending, delivered: bool) -> None:
        result = Delivery(
            trigger=pending.trigger.name,
            subscriber=pending.trigger.subscriber,
            event_type=str(pending.event["type"]),
            event_id=str(pending.event["id"]),
            attempts=tuple(pending.attempts),
            delivered=delivered,
        )
        if not delivered:
            self._dead_letter(result, pending.event)
        pending.future.set_result(result)

    def _post(
        self, url: str, headers: Mapping[str, str], body: Any, timeout: float
    ) -> tuple[int | None, str, float | None]:
        try:
            response = self._session.post(
                url, headers=dict(headers), data=body, timeout=timeout, allow_redirects=False
            )
        except requests.Timeout:
            return None, "timeout", None
        except requests.ConnectionError:
            return None, "connection refused", None
        except requests.RequestException as exc:
            return None, type(exc).__name__, None
        retry_after = parse_retry_after(response.headers.get("Retry-After"), self.now())
        return response.status_code, response.reason or "", retry_after

    def _dead_letter(self, delivery: Delivery, event: CloudEvent) -> None:
        attributes, data, stripped = event_record(event)
        last = delivery.attempts[-1]
        answered = [a for a in delivery.attempts if a.status is not None]
        letter = DeadLetter(
            time=self.now(),
            subscriber=delivery.subscriber,
            trigger=delivery.trigger,
            status=answered[-1].status if answered else None,
            attempts=len([a for a in delivery.attempts if a.reason != _STOPPED]),
            reason=last.reason or str(last.status),
            attributes=attributes,
            data=data,
            stripped=stripped,
        )
        try:
            self.dead_letters.append(letter)
        except OSError:
            log.exception("could not write a dead letter")
        self.report(describe(letter))

    def _report(
        self, trigger: Trigger, event: CloudEvent, attempt: Attempt, number: int, delivered: bool
    ) -> None:
        event_type = str(event["type"])
        if event_type in self.quiet_types and delivered:
            return
        outcome = str(attempt.status) if attempt.status is not None else attempt.reason
        retry = f", retry in {attempt.delay_after:.1f}s" if attempt.delay_after is not None else ""
        self.report(
            f"{short(event_type):<30} id={event['id']} → {trigger.subscriber:<13} "
            f"{outcome} (attempt {number}{retry})"
        )

    # --- lifecycle -----------------------------------------------------------------------------
    def close(self, wait: bool = True) -> None:
        """Stops accepting; pending retries end at their next wait and are dead-lettered."""
        self._stopping.set()
        self._timer.close()  # pending retries run now, see the stop, and are dead-lettered
        for pool in self._pools.values():
            pool.shutdown(wait=wait)


def serve(broker: Broker, *, host: str = "127.0.0.1", port: int = 8080) -> CloudEventServer:
    """The broker's HTTP ingress (not started)."""
    return CloudEventServer(broker.accept, host=host, port=port, name="broker")
