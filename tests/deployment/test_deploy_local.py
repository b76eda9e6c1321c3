"""deploy with the lock held through long applies, and with the local driver (make run)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from shared.adapters.local_driver import LocalDriver
from shared.clock import FakeClock
from shared.deployment.object_names import deployment_name
from tests.deploy_harness import DeployHarness, flow_doc, step
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.kube_api import FakeKubeApi

ROOT = Path(__file__).resolve().parents[2]


def test_the_lock_outlives_a_long_apply(
    redis: Redis, clock: FakeClock, kube_api: FakeKubeApi, component_repo: FakeComponentRepo
) -> None:
    """Four slow writes (1.6 s) of six under a 1 s lock: extended after each write, so a
    concurrent start waits for it and then finds nothing to do."""
    component_repo.add("comp")
    kube_api.auto_ready = True
    harness = DeployHarness(redis, clock, kube_api, component_repo)
    harness.services.lock_seconds = 1.0
    kube_api.fail("apply", "*", None, delay=0.4, times=4)
    doc = flow_doc(nodes=[step("a"), step("b")])
    first = threading.Thread(target=harness.start, args=(doc,), kwargs={"event_id": "one"})
    first.start()
    while kube_api.count("apply", ok=None) == 0 and not kube_api.requests:
        time.sleep(0.01)
    harness.start(doc, event_id="two")
    first.join()
    assert kube_api.count("apply", ok=None) == 6
    assert len(harness.events("flow.started")) == 1
    harness.close()


@pytest.fixture
def local(
    redis: Redis,
    clock: FakeClock,
    kube_api: FakeKubeApi,
    component_repo: FakeComponentRepo,
    tmp_path: Path,
) -> Iterator[DeployHarness]:
    component_repo.add("comp", entrypoint="examples.components.source")
    driver = LocalDriver(
        command=[sys.executable, "-m", "tests.fakes.step_worker"],
        workdir=tmp_path,
        base_env=dict(os.environ),
        cwd=ROOT,
    )
    harness = DeployHarness(redis, clock, kube_api, component_repo, driver=driver)
    yield harness
    harness.close()


def test_local_driver_runs_replicas_as_processes(local: DeployHarness) -> None:
    driver = local.driver
    assert isinstance(driver, LocalDriver)
    local.start(flow_doc("f1", [step("a", replicas=2), step("b")]))
    assert len(driver.processes(deployment_name("f1", "a"))) == 2
    assert len(driver.processes(deployment_name("f1", "b"))) == 1
    [started] = local.events("flow.started")
    assert started.data["replicas"] == {"a": 2, "b": 1}
    local.penalty("flow", "f1", "suspend", "suspended")
    assert driver.processes(deployment_name("f1", "a")) == []
    local.penalty("flow", "f1", None, "restored")
    assert len(driver.processes(deployment_name("f1", "a"))) == 2
    local.stop("f1")
    assert driver.list_managed() == []
    assert len(local.events("flow.stopped")) == 1
    assert local.kube.requests == []  # the local driver never talks to Kubernetes
