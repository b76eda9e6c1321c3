"""`make run` with OIH_EVENT_BUS: a flow.starting published on the hub's event bus is deployed
by the whole local system, and its flow.started comes back on the bus, as the hub expects."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.local.embedded_iam import print_token
from tests.interop.test_bridge import HubBus, hub_message

ROOT = Path(__file__).resolve().parents[2]


def our_shape() -> dict[str, Any]:
    flow: dict[str, Any] = json.loads((ROOT / "examples" / "flow.json").read_text())
    flow["startedBy"] = flow["owners"][0]["id"]  # an admin (the hub) names the user
    return flow


def flow_repository_shape() -> dict[str, Any]:
    """The same flow as the Flow Repository publishes it (services/flow-repository format():
    `id`, the tenant among the owners, `startedBy`, no top-level `tenant`)."""
    flow = our_shape()
    tenant = flow.pop("tenant")
    flow["id"] = "hub-flow-1"
    flow["owners"] = [*flow["owners"], {"id": tenant, "type": "tenant"}]
    flow["startedBy"] = flow["owners"][0]["id"]
    return flow


@pytest.mark.slow
@pytest.mark.parametrize("shape", [our_shape, flow_repository_shape], ids=["ours", "oih"])
def test_a_flow_started_over_the_bus_comes_back_on_the_bus(
    amqp_vhost: str, tmp_path: Path, shape: Callable[[], dict[str, Any]]
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DEMO")}
    env.update({"PYTHONUNBUFFERED": "1", "OIH_EVENT_BUS": amqp_vhost})
    out = (tmp_path / "run.out").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli.main", "run", "--no-demo", "--broker-port", "0",
         "--state-dir", str(tmp_path / "state")],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    hub = HubBus(amqp_vhost)  # listens for flow.started / stopped / failed
    try:
        deadline = time.monotonic() + 90
        while "ready: broker" not in (tmp_path / "run.out").read_text():
            assert process.poll() is None and time.monotonic() < deadline, (
                tmp_path / "run.out"
            ).read_text()[-3000:]
            time.sleep(0.3)
        while "bridge: event-bus" not in (tmp_path / "run.out").read_text():
            assert time.monotonic() < deadline, (tmp_path / "run.out").read_text()[-3000:]
            time.sleep(0.3)
        time.sleep(1)  # the bridge's queue is bound once it consumes
        flow = shape()
        # the flow's user exists in the hub's IAM (the bridge's events come from the hub's
        # service account, so the flow runs for startedBy once the IAM confirms that user)
        session = json.loads((tmp_path / "state" / "session.json").read_text())
        print_token(
            "acme",
            sub="alice",
            iam_url=session["iam_url"],
            service_token=session["env"]["IAM_SERVICE_TOKEN"],
            out=io.StringIO(),
        )
        hub.publish("flow.starting", hub_message("flow.starting", flow))
        received = hub.received(1, timeout=60)
        assert [key for key, _ in received] == ["flow.started"], (tmp_path / "run.out").read_text()[
            -3000:
        ]
        ((_, message),) = received
        assert message["payload"]["id"] == flow["id"]
        assert message["headers"]["name"] == "flow.started"
        # the bridge reports each crossing once it is done, which may be after the hub has
        # the message: wait for the lines rather than read the log at once
        wanted = ("bus → broker: flow.starting", "broker → bus: flow.started")
        deadline = time.monotonic() + 30
        log = (tmp_path / "run.out").read_text()
        while not all(line in log for line in wanted) and time.monotonic() < deadline:
            time.sleep(0.2)
            log = (tmp_path / "run.out").read_text()
        assert all(line in log for line in wanted), log[-3000:]
    finally:
        hub.connection.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=40)
        out.close()
    assert process.returncode == 0
