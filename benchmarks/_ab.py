"""Same-run A/B of one tick's parts: the Lua scripts (and the Python plan) of a git revision
against the working tree, alternating, on one Redis (`make bench` skips `_` modules).

    .venv/bin/python -m benchmarks._ab main 20      # REF, rounds

Times, each a median over the rounds: flow_start_due (the read), the plan in Python, the
flow_start_fire call, and the lower bound (one EVALSHA: ZRANGEBYSCORE + 1,000 ZADD). The
revision's scripts are loaded from `git show REF:shared/scripts/...`; its Python is not: the
read and the plan are the working tree's (a revision whose fire script takes one packed
argument per entry gets its arguments in that form); only the fire call is compared.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time

from benchmarks import flow_start
from benchmarks._redis import redis_server
from shared import keys
from shared.admission import cron as admission_cron
from shared.admission import queue as admission
from shared.admission import schedule
from shared.scripts import ArgT, script_source

_INCLUDE = re.compile(r"^--#include ([A-Za-z0-9_]+)[ \t]*$", re.MULTILINE)
TOTAL, DUE = 100_000, 1_000
WRITTEN = [
    keys.outbox(keys.ADMISSION),
    keys.admitted_runs(),
    keys.run_deadlines(),
    keys.admission_counts(),
    keys.charged_through(),
]


def source_at(ref: str, name: str) -> str:
    """A script's source as `shared.scripts.script_source` builds it, at revision `ref`."""

    def body(script: str) -> str:
        text = subprocess.run(
            ["git", "show", f"{ref}:shared/scripts/{script}.lua"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return _INCLUDE.sub(lambda match: body(match.group(1)), text.partition("\n")[2])

    return "#!lua\n" + body(name)


def main(ref: str, rounds: int) -> None:
    variants = {"old": source_at(ref, "flow_start_fire"), "new": script_source("flow_start_fire")}
    with redis_server() as redis:
        flow_start.populate(redis, DUE, "* * * * *", prefix="due-", now=flow_start.T0 - 30,
                            overlapPolicy="allow")  # fmt: skip
        flow_start.populate(redis, TOTAL - DUE, "0 0 1 6 *", prefix="idle-", now=flow_start.T0 - 30)
        inputs = admission.read_inputs(redis, flow_start.ROOMY)
        shas = {name: redis.script_load(text) for name, text in variants.items()}
        raw = redis.register_script(flow_start.RAW_TICK)
        redis.zunionstore("bench:due", [keys.schedule_due()])
        times: dict[str, list[float]] = {name: [] for name in [*variants, "due", "plan", "bound"]}
        script_keys = admission.script_keys(None)
        old_format = {name: "malformed plan" not in text for name, text in variants.items()}

        def fire_args(name: str, now: float, flat: list[bytes]) -> list[ArgT]:
            next_times = schedule.NextTimes()
            if not old_format[name]:  # as a tick packs them (from the read's bytes)
                return admission_cron.fire_args_packed(flat, flow_start.ROOMY, now, next_times)
            entries = admission_cron.due_entries_of(flat)
            planned = [
                admission_cron.plan_entry(e, flow_start.ROOMY, now, next_times) for e in entries
            ]
            return [f"{plan}\x1f{ids}" for plan, ids in planned]  # one packed argument each

        written = {}
        for name, sha in shas.items():  # what each writes, from the same state at the same time
            now = flow_start.T0 + 60
            redis.delete(*WRITTEN, keys.fencing_counter(), keys.start_buckets())
            redis.zadd(keys.schedule_due(), {f"due-{n}": now - 1 for n in range(DUE)})
            args = [*admission.header(inputs, now=now, source=flow_start.SOURCE, once=None)]
            args += fire_args(name, now, admission_cron.due_packed(redis, now, DUE))
            redis.evalsha(sha, len(script_keys), *script_keys, *args)
            written[name] = [redis.dump(key) for key in WRITTEN]
        print("same writes (outbox, runs, deadlines, counts):", written["old"] == written["new"])
        for i in range(rounds):
            for j, (name, sha) in enumerate(shas.items()):
                now = flow_start.T0 + 60 * (len(shas) * i + j)
                redis.delete(*WRITTEN)
                redis.zadd(keys.schedule_due(), {f"due-{n}": now - 1 for n in range(DUE)})
                started = time.perf_counter()
                entries = admission_cron.due_packed(redis, now, DUE)
                read = time.perf_counter()
                args = [*admission.header(inputs, now=now, source=flow_start.SOURCE, once=None)]
                args += fire_args(name, now, entries)
                planned = time.perf_counter()
                reply = redis.evalsha(sha, len(script_keys), *script_keys, *args)
                times[name].append(time.perf_counter() - planned)
                times["due"].append(read - started)
                times["plan"].append(planned - read)
                assert reply[2] == DUE, reply
            redis.zadd("bench:due", {f"due-{n}": flow_start.T0 for n in range(DUE)})
            started = time.perf_counter()
            raw(keys=["bench:due"], args=[flow_start.T0])
            times["bound"].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, value in median.items():
        print(f"{name:>6} {value * 1e3:7.2f} ms  {value / median['bound']:5.1f}x the bound")
    print(f"fire new / old: {median['new'] / median['old']:.3f}")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(arguments[0] if arguments else "main", int(arguments[1]) if len(arguments) > 1 else 20)
