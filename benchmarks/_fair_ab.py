# ruff: noqa: E501  (the report table keeps one figure per line)
"""Same-run A/B of the fair-by-usage changes to the admission scripts (issue 19 (d)): the
working tree's scripts against the same scripts with those changes taken out, alternating,
one Redis, the real Python wrappers (`make bench` skips `_` modules).

    .venv/bin/python -m benchmarks._fair_ab 9      # ROUNDS; writes results/fair_ab.{json,md}

"Before" is the working tree's shared/scripts with the script diffs of CHANGES reversed
(`git diff C^ C | patch -R`; the key table keeps the added keys, unused): charging running
runs at ticks (flow_start_charge, {adm}charged), the aging guard and aging per flow ({adm}agef,
the f:<flow> running counts), an aged pick leaving the virtual time alone. Figures, each a
median over the rounds:

1. decisions/s of flow.execute (5,000 runs of 10 tenants, 200 slots: 200 admitted, the rest
   queue), as benchmarks/flow_start.py's decisions case;
2. decisions/s of releases that admit the next waiting run (the 200 admitted ones end: the
   fair pick, aging, the tags of three levels);
3. a tick (dispatch + fire) admitting 1,000 due of 100,000 scheduled flows while 200 runs
   hold slots, all due to be charged (the most one dispatch charges: 100).
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from redis import Redis
from redis.commands.core import Script

from benchmarks import flow_start
from benchmarks._redis import redis_server
from shared import keys
from shared.admission import cron as admission_cron
from shared.admission import queue as admission
from shared.model.policy import parse_policy
from shared.scripts import LuaScript, load_script, script_source

CHANGES = ("78bab80", "d8fb162", "a51581d")  # landed on main, newest last
SCRIPTS = ("flow_start_execute", "flow_start_release", "flow_start_dispatch", "flow_start_fire")
_INCLUDE = re.compile(r"^--#include ([A-Za-z0-9_]+)[ \t]*$", re.MULTILINE)
SOURCE = flow_start.SOURCE
T0 = flow_start.T0
TOTAL, DUE, RUNNING = 100_000, 1_000, 200
DECISIONS, RELEASES = 5_000, 200  # every run admitted of the 5,000 ends
DECIDE = parse_policy({"slots": 200, "defaults": {"max_waiting_runs": 1_000_000}})
WRITTEN = [
    keys.outbox(keys.ADMISSION),
    keys.admitted_runs(),
    keys.run_deadlines(),
    keys.admission_counts(),
    keys.charged_through(),
    keys.fencing_counter(),
    keys.start_buckets(),
]


def before_sources(repo: Path) -> dict[str, str]:
    """The scripts as script_source builds them, with the CHANGES' script diffs reversed."""
    folder = Path(tempfile.mkdtemp(prefix="fair-ab-"))
    scripts = folder / "scripts"
    subprocess.run(["cp", "-r", str(repo / "shared" / "scripts"), str(scripts)], check=True)
    for change in reversed(CHANGES):
        diff = subprocess.run(
            ["git", "-C", str(repo), "diff", f"{change}^", change, "--", "shared/scripts"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.replace("shared/scripts/", "scripts/")
        # the key table's hunks may not apply (later changes added keys beside ours): kept
        subprocess.run(
            ["patch", "-R", "-p1", "-s", "-f", "--no-backup-if-mismatch", "-r", "-"],
            input=diff,
            text=True,
            cwd=folder,
            check=False,
            capture_output=True,
        )

    def body(name: str) -> str:
        text = (scripts / f"{name}.lua").read_text()
        return _INCLUDE.sub(lambda match: body(match.group(1)), text.partition("\n")[2])

    return {name: "#!lua\n" + body(name) for name in SCRIPTS}


def lua_script(name: str, source: str) -> LuaScript:
    script = LuaScript.__new__(LuaScript)
    script.name, script.source = name, source
    script.script = Script(None, source.encode())  # type: ignore[arg-type]
    return script


@contextmanager
def variant(scripts: dict[str, LuaScript]) -> Iterator[None]:
    """The admission wrappers call these scripts (the others as they are)."""

    def pick(name: str) -> LuaScript:
        return scripts.get(name) or load_script(name)

    modules = (admission, admission_cron)
    saved = [vars(module)["load_script"] for module in modules]
    for module in modules:
        setattr(module, "load_script", pick)  # noqa: B010 (not re-exported: set by name)
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            setattr(module, "load_script", original)  # noqa: B010


def decisions_and_releases(redis: Redis) -> tuple[float, float]:
    """Seconds for DECISIONS executes, then for RELEASES releases admitting a waiting run."""
    redis.flushdb()
    redis.sadd(keys.deployed_flows(), *[f"flow-{n}" for n in range(50)])
    inputs = admission.read_inputs(redis, DECIDE)
    runs = [
        admission.ExecuteRun(
            f"run-{n}", f"flow-{n % 50}", f"tenant-{n % 10}", f"user-{n % 20}", 3600, '{"n":1}'
        )
        for n in range(DECISIONS)
    ]
    started = time.perf_counter()
    for run in runs:
        admission.execute(redis, inputs, None, run, now=T0, source=SOURCE)
    executes = time.perf_counter() - started
    ends = [
        (run_id, int(str(record["k"]))) for run_id, record in admission.admitted_runs(redis).items()
    ]
    assert len(ends) == RELEASES, len(ends)
    started = time.perf_counter()
    for n, (run_id, token) in enumerate(ends):  # each admits the next waiting run
        admission.release(
            redis, inputs, None, run_id=run_id, token=token, now=T0 + 1 + n * 0.01, source=SOURCE
        )
    releases = time.perf_counter() - started
    return executes, releases


def tick(redis: Redis, now: float) -> tuple[float, float]:
    """Seconds for the dispatch and the fire of one tick, RUNNING runs holding slots."""
    redis.delete(*WRITTEN)
    redis.zadd(keys.schedule_due(), {f"due-{n}": now - 1 for n in range(DUE)})
    inputs = admission.read_inputs(redis, flow_start.ROOMY)
    for n in range(RUNNING):  # admitted a minute ago: each is due to be charged
        run = admission.ExecuteRun(
            f"held-{now}-{n}", f"idle-{n}", f"tenant-{n % 100}", "u", 3600, "{}"
        )
        redis.sadd(keys.deployed_flows(), run.flow_id)
        admission.execute(redis, inputs, None, run, now=now - 60, source=SOURCE)
    started = time.perf_counter()
    admission.dispatch(redis, inputs, None, now=now, source=SOURCE)
    dispatched = time.perf_counter()
    report = admission_cron.fire_due(redis, inputs, flow_start.ROOMY, now=now, source=SOURCE)
    fired = time.perf_counter()
    assert report.admitted == DUE, report
    return dispatched - started, fired - dispatched


def median(values: list[float]) -> float:
    return statistics.median(values)


def run(results_dir: Path, rounds: int) -> dict[str, Any]:
    repo = Path(__file__).resolve().parent.parent
    sources = {"before": before_sources(repo), "after": {n: script_source(n) for n in SCRIPTS}}
    assert sources["before"] != sources["after"], "nothing reversed"
    assert "charge_running" not in sources["before"]["flow_start_dispatch"]
    variants = {
        name: {n: lua_script(n, text) for n, text in texts.items()}
        for name, texts in sources.items()
    }
    times: dict[str, dict[str, list[float]]] = {
        v: {"execute": [], "release": [], "dispatch": [], "fire": []} for v in variants
    }
    with redis_server() as redis:
        url = redis.connection_pool.connection_kwargs
        decide = Redis(host=url["host"], port=url["port"], db=1)
        flow_start.populate(
            redis, DUE, "* * * * *", prefix="due-", now=T0 - 30, overlapPolicy="allow"
        )
        flow_start.populate(redis, TOTAL - DUE, "0 0 1 6 *", prefix="idle-", now=T0 - 30)
        step = 0
        for i in range(rounds + 1):  # the first round warms up (script loads), not counted
            for name in list(variants) if i % 2 else list(variants)[::-1]:
                with variant(variants[name]):
                    executes, releases = decisions_and_releases(decide)
                    step += 1
                    dispatch_s, fire_s = tick(redis, T0 + 60 * step)
                if i:
                    for figure, value in (
                        ("execute", executes),
                        ("release", releases),
                        ("dispatch", dispatch_s),
                        ("fire", fire_s),
                    ):
                        times[name][figure].append(value)
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    result: dict[str, Any] = {"rounds": rounds, "load_average_after": load, "changes": CHANGES}
    for name, figures in times.items():
        result[name] = {
            "execute_per_s": DECISIONS / median(figures["execute"]),
            "release_per_s": RELEASES / median(figures["release"]),
            "dispatch_ms": median(figures["dispatch"]) * 1e3,
            "fire_ms": median(figures["fire"]) * 1e3,
            "tick_ms": median(
                [d + f for d, f in zip(figures["dispatch"], figures["fire"], strict=True)]
            )
            * 1e3,
        }
    before, after = result["before"], result["after"]
    result["ratio"] = {
        "execute_per_s": after["execute_per_s"] / before["execute_per_s"],
        "release_per_s": after["release_per_s"] / before["release_per_s"],
        "tick_ms": after["tick_ms"] / before["tick_ms"],
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "fair_ab.json").write_text(json.dumps(result, indent=2))
    (results_dir / "fair_ab.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    before, after, ratio = result["before"], result["after"], result["ratio"]

    def verdict(value: float, higher_is_better: bool) -> str:
        ok = value >= 0.9 if higher_is_better else value <= 1.1
        return "within 10 %" if ok else "OUTSIDE 10 %"

    rows = [
        (
            "flow.execute decisions/s (5,000; 200 slots)",
            f"{before['execute_per_s']:,.0f}",
            f"{after['execute_per_s']:,.0f}",
            f"{ratio['execute_per_s']:.3f}x",
            verdict(ratio["execute_per_s"], True),
        ),
        (
            "releases admitting the next run, per s (200)",
            f"{before['release_per_s']:,.0f}",
            f"{after['release_per_s']:,.0f}",
            f"{ratio['release_per_s']:.3f}x",
            verdict(ratio["release_per_s"], True),
        ),
        (
            "tick: dispatch (200 running, 100 charged)",
            f"{before['dispatch_ms']:.2f} ms",
            f"{after['dispatch_ms']:.2f} ms",
            "",
            "",
        ),
        (
            "tick: fire 1,000 due of 100,000",
            f"{before['fire_ms']:.2f} ms",
            f"{after['fire_ms']:.2f} ms",
            "",
            "",
        ),
        (
            "tick: dispatch + fire",
            f"{before['tick_ms']:.2f} ms",
            f"{after['tick_ms']:.2f} ms",
            f"{ratio['tick_ms']:.3f}x",
            verdict(ratio["tick_ms"], False),
        ),
    ]
    lines = [
        "# Fair by usage: admission before and after (issue 19)",
        "",
        f"Same-run A/B (`python -m benchmarks._fair_ab {result['rounds']}`): the working tree's admission scripts against the same scripts with the changes {', '.join(result['changes'])} reversed, alternating, one Redis, the real Python wrappers; medians of {result['rounds']} rounds. Shared 2-core box (load average {result['load_average_after']} at the end): read the ratios.",
        "",
        "| figure | before | after | after / before | |",
        "|---|---:|---:|---:|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    run(Path(__file__).resolve().parent / "results", int(sys.argv[1]) if len(sys.argv) > 1 else 9)
