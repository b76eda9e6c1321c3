"""`make run` with QUEUE_BACKEND=amqp: existing OIH connectors run unchanged. Deploy starts
the real ferryman (npm) for each step of the tiny test connector, step-execute publishes in
ferryman's format to the flow's own queues on a real RabbitMQ, `orchestrator backchannel`
turns ferryman's replies into step events:
- a two-step flow (each step emits two records) runs flow.execute → step 1 → step 2 →
  flow.execution.completed;
- a throwing action gives step.failed, is retried, and the run fails;
- a ferryman killed mid-message: the message goes to its restarted replica, and the next step
  gets each output once (no duplicate completion);
- the flow token (in every message, as ferryman's apiKey) is in no emitted event, log line
  or dead letter of ours.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from shared.deployment.flow_tokens import stored_flow_token
from shared.runtime import event_log
from tests.fakes.component_repo import FakeComponentRepo
from tests.support.ferryman import CONNECTOR
from tests.support.rabbitmq import RabbitMq
from tests.support.system import wait_for

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.example/oih/co-test-connector:1"
POLICY = """\
slots: 4
defaults:
  step_retries: 1
  step_timeout_seconds: 60
"""


def connector_folder(tmp_path: Path, modules: Path) -> Path:
    """The connector as its image holds it: its files and its node_modules (ferryman)."""
    folder = tmp_path / "connector"
    shutil.copytree(CONNECTOR, folder)
    (folder / "node_modules").symlink_to(modules / "node_modules")
    return folder


def flow(flow_id: str, function: str, steps: int, then: str | None = None) -> dict[str, Any]:
    nodes = [{"id": f"s{i}", "componentId": "oih-connector",
              "function": then if then and i > 1 else function,
              "fields": {"tag": f"s{i}"}} for i in range(1, steps + 1)]  # fmt: skip
    edges = [{"source": f"s{i}", "target": f"s{i + 1}"} for i in range(1, steps)]
    return {"id": flow_id, "tenant": "acme", "owners": [{"id": "alice", "type": "user"}],
            "graph": {"nodes": nodes, "edges": edges}}  # fmt: skip


class Run:
    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp = tmp_path
        self.state = tmp_path / "state"
        self.out_path = tmp_path / "run.out"
        self.out = self.out_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli.main", "run", "--no-demo", "--broker-port", "0",
             "--state-dir", str(self.state)],
            cwd=ROOT, env=env, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def output(self) -> str:
        text = self.out_path.read_text(errors="replace")
        return "\n".join(line for line in text.splitlines() if " pika." not in line)

    def session(self) -> dict[str, Any]:
        deadline = time.monotonic() + 120
        path = self.state / "session.json"
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()[:6000]
            if path.exists() and "backchannel: rabbitmq" in self.output():
                try:
                    found: dict[str, Any] = json.loads(path.read_text())
                    return found
                except ValueError:
                    pass
            time.sleep(0.2)
        raise AssertionError("orchestrator run did not start:\n" + self.output()[-3000:])

    def send(self, event_type: str, data: dict[str, Any]) -> None:
        path = self.tmp / f"{event_type}-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(data))
        sent = subprocess.run(
            [sys.executable, "-m", "shared.cli.main", "send", event_type, str(path),
             "--tenant", "acme", "--state-dir", str(self.state)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.out.close()


@pytest.fixture()
def run(
    tmp_path: Path, rabbitmq: RabbitMq, amqp_vhost: str, ferryman_modules: Path,
    component_repo: FakeComponentRepo,
) -> Iterator[Run]:  # fmt: skip
    component_repo.add("oih-connector", image=IMAGE, functions=("emitTwo", "fail", "slowTwo"))
    (tmp_path / "policy.yaml").write_text(POLICY)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DEMO")}
    env.update({
        "PYTHONUNBUFFERED": "1",
        "QUEUE_BACKEND": "amqp",
        "AMQP_URL": amqp_vhost,
        "AMQP_MANAGEMENT_URL": f"http://guest:guest@127.0.0.1:{rabbitmq.management_port}",
        "COMPONENT_REPOSITORY_URL": component_repo.url,
        "ORCHESTRATOR_POLICY_FILE": str(tmp_path / "policy.yaml"),
        "ORCHESTRATOR_LOCAL_IMAGES": f"{IMAGE}={connector_folder(tmp_path, ferryman_modules)}",
    })  # fmt: skip
    running = Run(tmp_path, env)
    try:
        yield running
    finally:
        running.stop()


def wait_events(redis: Redis, run: Run, wanted: Any, what: str, timeout: float = 120) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        events = event_log.recent(redis, 2000)
        found = wanted(events)
        if found:
            return events
        assert run.process.poll() is None, run.output()[-3000:]
        if time.monotonic() > deadline:
            seen = [(e.type.rsplit(".", 2)[-2:], e.data) for e in events[-20:]]
            raise AssertionError(f"no {what}; last events {seen}\n{run.output()[-4000:]}")
        time.sleep(0.3)


def of(events: list[Any], suffix: str, flow_id: str) -> list[Any]:
    return [e for e in events if e.type.endswith(suffix) and isinstance(e.data, dict)
            and flow_id in (e.data.get("flowId"), e.data.get("id"))]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_existing_connectors_run_unchanged_through_ferryman(run: Run, tmp_path: Path) -> None:
    session = run.session()
    redis = Redis.from_url(session["redis_url"])
    run.send("flow.starting", flow("two-steps", "emitTwo", 2))
    run.send("flow.starting", flow("throws", "fail", 1))
    run.send("flow.starting", flow("killed", "slowTwo", 2, then="emitTwo"))
    for flow_id in ("two-steps", "throws", "killed"):
        wait_events(
            redis, run, lambda ev, f=flow_id: of(ev, ".flow.started", f), f"{flow_id} started"
        )

    run.send("flow.execute", {"flowId": "two-steps", "msg": {"data": {"n": 7}}})
    events = wait_events(redis, run, lambda ev: of(ev, ".flow.execution.completed", "two-steps"),
                         "the two-step run completed")  # fmt: skip
    (completed,) = of(events, ".flow.execution.completed", "two-steps")
    # step 1 once, its two records each through step 2
    assert completed.data["steps"] == 3

    run.send("flow.execute", {"flowId": "throws", "msg": {"data": {"n": 1}}})
    events = wait_events(redis, run, lambda ev: of(ev, ".flow.execution.failed", "throws"),
                         "the throwing run failed")  # fmt: skip
    (failed,) = of(events, ".flow.execution.failed", "throws")
    assert failed.data["runId"] != completed.data["runId"]
    broker_log = run.state / "logs" / "broker.log"
    # tried, retried once (policy step_retries: 1), then the run failed; the broker logs a
    # delivery once it is answered, which may be after the run's failure is on record
    wait_for(lambda: broker_log.read_text().count("step.failed") >= 2,
             "the broker's two step.failed deliveries")  # fmt: skip

    # a ferryman killed between its two outputs: the message is redelivered to its restart
    deploy_log = run.state / "logs" / "deploy.log"
    pid = int(re.findall(r"started worker killed-s1-\S+ pid=(\d+)", deploy_log.read_text())[-1])
    run.send("flow.execute", {"flowId": "killed", "msg": {"data": {"n": 3}}})
    backchannel_log = run.state / "logs" / "backchannel.log"
    wait_for(lambda: "(output) of message" in backchannel_log.read_text().split("throws")[-1],
             "the first output of the slow step")  # fmt: skip
    os.kill(pid, signal.SIGKILL)
    events = wait_events(redis, run, lambda ev: of(ev, ".flow.execution.completed", "killed"),
                         "the killed step's run completed")  # fmt: skip
    (killed,) = of(events, ".flow.execution.completed", "killed")
    assert killed.data["steps"] == 3  # s1 once, s2 once per output: its first output not twice
    assert len(re.findall(r"started worker killed-s1-", deploy_log.read_text())) >= 2

    # the flow token: in each message on the flow's own queue (ferryman's apiKey), nowhere else
    token = stored_flow_token(redis, "two-steps", key=session["env"]["ORCHESTRATOR_KEY"])
    assert token, "deploy created a flow token in the embedded IAM"
    ours = [run.output(), json.dumps([e.to_json() for e in event_log.recent(redis, 5000)])]
    ours += [p.read_text(errors="replace") for p in (run.state / "logs").glob("*.log")]
    dead = run.state / "dead-letters.jsonl"
    ours.append(dead.read_text() if dead.exists() else "")
    assert all(token not in text for text in ours)
