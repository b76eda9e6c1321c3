"""Handle each CloudEvent once (docs/architecture.md §7): dedupe key, state change and outbox in
one step.

Two ways to use it, both keeping the invariant "all three or none":
- `commit(write, events)`: the handler queues its Redis writes on a MULTI pipeline; the dedupe
  key (WATCHed) and the outbox entries are added to the same transaction;
- a Lua script receives the token's key and TTL (`script_dedupe`) and does the same inside
  the script (first `SET dedupe NX`, then the state change, then RPUSH to the outbox).
`Once` is the one dedupe token: the runtime makes one per incoming event (`ctx.once`), a
handler makes its own for parts of an event's work (`Once.keyed`), and every script wrapper
and ledger write takes one (None: no dedupe).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError

from shared import keys
from shared.events import IncomingEvent, OutgoingEvent
from shared.runtime import outbox

DEDUPE_TTL_SECONDS = 7 * 24 * 3600

Write = Callable[[Pipeline], None]


@dataclass(frozen=True)
class Once:
    """The idempotency of one incoming event within one tag (one function's state)."""

    redis: Redis
    tag: str
    source: str
    event_id: str
    # Who sent the event, as authenticated (Principal.scope): part of the dedupe key, so the
    # same (source, id) sent by someone else is another event, never a duplicate of this one.
    principal: str = ""
    ttl_seconds: int = DEDUPE_TTL_SECONDS

    @classmethod
    def for_event(cls, redis: Redis, tag: str, event: IncomingEvent, principal: str) -> Once:
        return cls(redis, tag, event.source, event.id, principal)

    @classmethod
    def keyed(cls, redis: Redis, tag: str, owner: str, *parts: str) -> Once:
        """A token of our own making: `owner` (a function) does one piece of work named by
        `parts` once, e.g. each run one flow.stopping ends, or one step output."""
        return cls(redis, tag, owner, "\x1f".join(parts))

    @property
    def dedupe_key(self) -> str:
        return keys.dedupe(self.tag, self.source, self.event_id, principal=self.principal)

    @property
    def _keys_to_check(self) -> list[str]:
        """The dedupe key, and the key the previous release wrote (without the principal) so
        that an event it handled before the upgrade is not handled again; dropped next
        release, when every such key has expired (CHANGELOG.md)."""
        if not self.principal:
            return [self.dedupe_key]
        return [self.dedupe_key, keys.dedupe(self.tag, self.source, self.event_id)]

    @property
    def outbox_key(self) -> str:
        return keys.outbox(self.tag)

    @property
    def event_id_prefix(self) -> str:
        """Ids of the events this one causes: the same on every redelivery."""
        if not self.principal:
            return keys.digest(self.tag, self.source, self.event_id)[:24]
        return keys.digest(self.tag, self.principal, self.source, self.event_id)[:24]

    def done(self) -> bool:
        return bool(self.redis.exists(*self._keys_to_check))

    def commit(self, write: Write | None, events: Sequence[OutgoingEvent] = ()) -> bool:
        """Applies `write`, marks the event done and stages `events`, atomically.

        Returns False (and changes nothing) when the event was already handled, also when a
        concurrent delivery of the same event won the race.
        """
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(*self._keys_to_check)  # type: ignore[no-untyped-call]
                if pipe.exists(*self._keys_to_check):
                    return False
                pipe.multi()
                if write is not None:
                    write(pipe)
                pipe.set(self.dedupe_key, b"1", ex=self.ttl_seconds)
                outbox.stage(pipe, self.tag, events)
                pipe.execute()
            except WatchError:
                return False
        return True


def script_dedupe(once: Once | None, tag: str) -> tuple[str, int]:
    """KEYS[1] and the dedupe TTL argument of a script that dedupes itself. Without a token
    (ticks: their work is idempotent by itself) a key of the tag's slot the script never
    touches, and TTL 0."""
    if once is None:
        return keys.dedupe(tag, "-", "-"), 0
    return once.dedupe_key, once.ttl_seconds
