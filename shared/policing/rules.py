"""The rules of the policy file (docs/architecture.md §10) evaluated against the ledger.

A rule names a metric, a subject level, a window and a limit (`max`). A subject violates it
when the measured value reaches `max` (a rule fires exactly at its limit, not below);
nothing measured (0) never violates, so `max: 0` means "any at all".
`error_ratio` is errors / finished runs. `min_runs` (any rule, meant for `error_ratio`)
makes a rule apply only once at least that many runs finished in the window. The rules of a
subject are those of its tenant (`Policy.rules_for`: global rules, a tenant's own rule with
the same name wins).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis import Redis

from shared.model.penalties import Evidence
from shared.model.policy import Policy, Rule
from shared.policing import ledger
from shared.policing.ledger import SubjectRef


@dataclass(frozen=True)
class Violation:
    subject: SubjectRef
    rule: Rule
    measured: float

    @property
    def severity(self) -> float:
        """How far above the limit (measured / max); the worst violation is acted on first."""
        return self.measured / self.rule.max if self.rule.max > 0 else float("inf")

    def evidence(self) -> Evidence:
        return Evidence(
            rule=self.rule.name,
            measured=self.measured,
            limit=self.rule.max,
            window=self.rule.window,
            window_seconds=self.rule.window_seconds,
        )


def window_of(rule: Rule) -> int:
    """The ledger ring a rule is measured on (see `ledger.windows`)."""
    return max(1, round(rule.window_seconds))


def measure(rule: Rule, totals: Mapping[str, float]) -> float | None:
    """The rule's metric over its window, or None while fewer than `min_runs` runs finished."""
    ended = totals.get("ended", 0.0)
    if ended < rule.min_runs:
        return None
    if rule.metric == "error_ratio":
        return totals.get("errors", 0.0) / ended if ended > 0 else None
    return totals.get(rule.metric, 0.0)


def violates(rule: Rule, measured: float | None) -> bool:
    """At or above the limit; a zero measurement never violates."""
    return measured is not None and measured > 0 and measured >= rule.max


def rules_of(policy: Policy, subject: SubjectRef) -> list[Rule]:
    return [rule for rule in policy.rules_for(subject.tenant) if rule.subject == subject.level]


def evaluate(
    redis: Redis, policy: Policy, subjects: Sequence[SubjectRef], *, now: float
) -> list[Violation]:
    """Every rule each subject breaks now, worst first (one round trip for all reads)."""
    wanted: list[tuple[SubjectRef, int]] = []
    checks: list[tuple[SubjectRef, Rule, int]] = []
    positions: dict[tuple[SubjectRef, int], int] = {}
    for subject in dict.fromkeys(subjects):
        for rule in rules_of(policy, subject):
            pair = (subject, window_of(rule))
            if pair not in positions:
                positions[pair] = len(wanted)
                wanted.append(pair)
            checks.append((subject, rule, positions[pair]))
    if not checks:
        return []
    totals = ledger.usage_many(redis, wanted, now=now)
    found = []
    for subject, rule, position in checks:
        measured = measure(rule, totals[position])
        if measured is not None and violates(rule, measured):
            found.append(Violation(subject, rule, measured))
    return sorted(found, key=lambda v: v.severity, reverse=True)
