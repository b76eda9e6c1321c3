"""A tick packs flow_start_fire's arguments from the due read's bytes (`fire_args_packed`):
they must be the arguments `fire_args` makes of the decoded entries, whatever the ids, the
schedules and how late the tick is."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from shared import keys
from shared.admission import cron, schedule
from shared.admission import queue as admission
from shared.events import FlowDocument
from shared.scripts import ArgT
from tests.support.flows import flow_doc, policy

POLICY = policy(defaults={"catchup_window_seconds": 120, "max_run_seconds": 900})
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SOURCE = "/component-orchestrator/flow-start"

names = st.text(st.characters(exclude_categories=["Cs", "Z", "Cc"]), min_size=1, max_size=6)
flows = st.lists(
    st.fixed_dictionaries(
        {
            "tenant": st.sampled_from(["acme", "globex", "ü\x1ft"]) | names,
            "owner": st.sampled_from(["u1", "u2", 'u"3\x1f']) | names,
            "cron": st.sampled_from(["* * * * *", "*/5 * * * *", "0 * * * *", "30 * * * * *"]),
            "settings": st.fixed_dictionaries(
                {},
                optional={
                    "overlapPolicy": st.sampled_from(["allow", "skip", "buffer_one"]),
                    "catchupWindowSeconds": st.integers(0, 600),
                    "maxRunSeconds": st.integers(1, 3600),
                    "spread": st.booleans(),
                },
            ),
        }
    ),
    min_size=1,
    max_size=25,
)


def as_bytes(args: list[ArgT]) -> list[bytes]:
    return [a if isinstance(a, bytes) else str(a).encode() for a in args]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(specs=flows, late=st.sampled_from([0, 1, 59, 61, 299, 3601, 86_400]))
def test_packed_arguments_are_the_decoded_ones(
    redis: Redis, specs: list[dict[str, Any]], late: int
) -> None:
    redis.flushall()
    inputs = admission.read_inputs(redis, POLICY)
    for n, spec in enumerate(specs):
        document = flow_doc(
            f"f-{n}", tenant=spec["tenant"], owner=spec["owner"], cron=spec["cron"],
            **spec["settings"],
        )  # fmt: skip
        flow = FlowDocument.parse(document)
        cron.store_schedule(redis, inputs, None, flow, now=T0, source=SOURCE)
    # one flow whose schedule went missing (the due entry without its hash entry)
    redis.zadd(keys.schedule_due(), {"orphan": T0 + 30})
    now = T0 + 60 + late
    flat = cron.due_packed(redis, now, 1000)
    decoded = cron.fire_args(cron.due_entries(redis, now, 1000), POLICY, now, schedule.NextTimes())
    packed = cron.fire_args_packed(flat, POLICY, now, schedule.NextTimes())
    assert as_bytes(packed) == as_bytes(decoded)
    assert int(decoded[0]) <= len(flat) // 3  # plans are shared, never more than entries
