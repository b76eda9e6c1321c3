"""A discrete-event trial of fair admission on the real scripts and Redis, with the injected
clock: tenants keep runs waiting (or arrive at set times), each admitted run holds its slot
for a duration chosen when it is admitted, and its end is released as flow-start does; with
`tick_every`, flow-start's tick (the dispatch script) runs at that interval too."""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from redis import Redis

from shared.clock import FakeClock
from shared.model.policy import Policy
from tests.support.admission import Admission

Duration = Callable[[str, int], float]  # (tenant, n-th run of the tenant) -> seconds


@dataclass
class Ran:
    run_id: str
    tenant: str
    waiting_since: float
    admitted: float
    ends: float


@dataclass
class Trial:
    redis: Redis
    policy: Policy
    duration: Duration
    # tenant (or `tenant/flow`: another flow of it) -> runs it keeps waiting (0: only arrivals)
    backlog: dict[str, int]
    arrivals: dict[str, list[float]] = field(default_factory=dict)
    tick_every: float | None = None  # seconds between ticks (None: no ticks)
    clock: FakeClock = field(default_factory=FakeClock)
    ran: list[Ran] = field(default_factory=list)
    waiting: dict[str, tuple[str, float]] = field(default_factory=dict)  # id -> tenant, since

    def __post_init__(self) -> None:
        self.adm = Admission(self.redis, self.clock, self.policy)
        self.tenants = sorted(set(self.backlog) | set(self.arrivals))
        self.adm.deploy(*[flow_of(t) for t in self.tenants])
        self._runs: dict[str, int] = defaultdict(int)
        self._ends: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._known: set[str] = set()
        self.start = self.clock.now()

    def _submit(self, tenant: str) -> None:
        self.adm.submit(tenant_of(tenant), flow_of(tenant), "u")
        run_id = next(reversed(self.adm.tokens))  # the id submit() just made
        self.waiting[run_id] = (tenant, self.clock.now())

    def _top_up(self) -> None:
        """One submission per short tenant per round, so no tenant gets the free slots first."""
        while True:
            waiting: defaultdict[str, int] = defaultdict(int)
            for tenant, _ in self.waiting.values():
                waiting[tenant] += 1
            short = [t for t, keep in sorted(self.backlog.items()) if waiting[t] < keep]
            if not short:
                return
            for tenant in short:
                self._submit(tenant)
                self._collect()

    def _collect(self) -> None:
        """Runs admitted since the last look get their end time."""
        now = self.clock.now()
        for run_id, record in self.adm.running().items():
            if run_id in self._known:
                continue
            self._known.add(run_id)
            tenant, since = self.waiting.pop(run_id, (str(record["t"]), now))
            seconds = self.duration(tenant, self._runs[tenant])
            self._runs[tenant] += 1
            self.ran.append(Ran(run_id, tenant, since, now, now + seconds))
            heapq.heappush(self._ends, (now + seconds, next(self._seq), run_id))

    def run(self, seconds: float) -> Trial:
        until = self.start + seconds
        pending = sorted((self.start + at, t) for t, ats in self.arrivals.items() for at in ats)
        self._top_up()
        self._collect()
        every = self.tick_every
        next_tick = self.start + every if every else float("inf")
        while True:
            next_end = self._ends[0][0] if self._ends else float("inf")
            next_arrival = pending[0][0] if pending else float("inf")
            at = min(next_end, next_arrival, next_tick)
            if at > until:
                break
            self.clock.set(at)
            if next_tick <= min(next_end, next_arrival):
                self.adm.dispatch()
                next_tick += every or float("inf")
            elif next_arrival <= next_end:
                self._submit(pending.pop(0)[1])
            else:
                _, _, run_id = heapq.heappop(self._ends)
                assert self.adm.release(run_id) == "released"
            self._collect()
            self._top_up()
        self.clock.set(until)
        return self

    # --- reading -------------------------------------------------------------------------
    def slot_seconds(self, lo: float, hi: float) -> dict[str, float]:
        """Slot-seconds each tenant held within [start + lo, start + hi]."""
        lo, hi = self.start + lo, self.start + hi
        held = dict.fromkeys(self.tenants, 0.0)
        for ran in self.ran:
            held[ran.tenant] += max(0.0, min(ran.ends, hi) - max(ran.admitted, lo))
        return held

    def shares(self, lo: float, hi: float) -> dict[str, float]:
        held = self.slot_seconds(lo, hi)
        total = sum(held.values()) or 1.0
        return {t: v / total for t, v in held.items()}

    def waits(self, tenant: str | None = None) -> list[float]:
        """How long each run waited, admitted or (at the end) still waiting."""
        done = [r.admitted - r.waiting_since for r in self.ran if tenant in (None, r.tenant)]
        now = self.clock.now()
        still = [now - since for t, since in self.waiting.values() if tenant in (None, t)]
        return done + still


def flow_of(tenant: str) -> str:
    """The flow of a trial's tenant; `tenant/name` is another flow of that tenant."""
    return f"{tenant}-flow"


def tenant_of(name: str) -> str:
    return name.partition("/")[0]


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def share_over_weight(shares: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {t: shares[t] / (weights[t] / total) for t in shares}
