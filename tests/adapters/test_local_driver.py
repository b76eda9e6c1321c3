"""The local driver: Deployments as real local processes (a stand-in worker module)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.component_repository import Component
from shared.adapters.local_driver import LocalDriver, selector_matches
from shared.deployment.desired_state import DesiredState, flow_desired_state, with_flow_token
from shared.deployment.object_names import flow_selector
from shared.deployment.worker_settings import WorkerSettings
from shared.events import FlowDocument
from shared.model.policy import TenantLimits
from shared.settings import Settings
from shared.wiring.deploy import make_driver
from tests.support.processes import alive

STUB = [sys.executable, "-m", "tests.fakes.step_worker"]
ROOT = Path(__file__).resolve().parents[2]


def state(
    replicas: int = 1, fields: dict[str, Any] | None = None, flow_id: str = "f1"
) -> DesiredState:
    doc = FlowDocument.parse(
        {
            "id": flow_id,
            "tenant": "acme",
            "owners": [{"id": "u1"}],
            "graph": {
                "nodes": [
                    {
                        "id": "a",
                        "componentId": "c",
                        "function": "run",
                        "fields": fields or {},
                        "nodeSettings": {"replicas": replicas},
                    }
                ]
            },
        }
    )
    component = Component(id="c", name="c", image="img", entrypoint="examples.components.source")
    return flow_desired_state(
        doc, {"c": component}, replace(TenantLimits(), max_replicas_per_step=10), WorkerSettings()
    )


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[LocalDriver]:
    local = LocalDriver(
        command=STUB,
        workdir=tmp_path / "logs",
        base_env={**os.environ, "WORKER_RECORD_DIR": str(tmp_path)},
        pass_env=("WORKER_RECORD_DIR",),
        cwd=ROOT,
    )
    yield local
    local.close()


def apply_all(driver: LocalDriver, desired: DesiredState, token: str = "") -> str:
    for manifest in sorted(desired.manifests, key=lambda m: m["kind"] != "Secret"):
        driver.apply(with_flow_token(manifest, token))
    return str(desired.deployments()[0]["metadata"]["name"])


def test_replicas_are_processes_with_the_secret_as_environment(
    driver: LocalDriver, tmp_path: Path
) -> None:
    name = apply_all(driver, state(replicas=3), token="tok")
    pids = driver.processes(name)
    assert len(pids) == 3
    [readiness] = driver.readiness(flow_selector("f1"))
    assert readiness.is_ready and (readiness.desired, readiness.ready) == (3, 3)
    wait_until(lambda: len(list(tmp_path.glob("*.json"))) == 3)
    env = json.loads((tmp_path / f"{pids[0]}.json").read_text())
    assert (env["FLOW_ID"], env["STEP_ID"], env["FLOW_TOKEN"]) == ("f1", "a", "tok")


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param(3, 1, id="scale down stops the extras"),
        pytest.param(1, 3, id="scale up starts more"),
    ],
)
def test_scaling(driver: LocalDriver, before: int, after: int) -> None:
    name = apply_all(driver, state(replicas=before))
    first = driver.processes(name)
    apply_all(driver, state(replicas=after))
    now = driver.processes(name)
    assert len(now) == after
    kept = set(first) & set(now)
    assert len(kept) == min(before, after)  # the same processes stay (no rollout)
    for pid in set(first) - kept:
        assert not alive(pid)


def test_suspension_scales_to_zero(driver: LocalDriver) -> None:
    name = apply_all(driver, state(replicas=2))
    pids = driver.processes(name)
    apply_all(driver, state(replicas=0))
    assert driver.processes(name) == []
    assert all(not alive(pid) for pid in pids)
    [readiness] = driver.readiness()
    assert readiness.is_ready and readiness.desired == 0


def test_changed_environment_rolls_the_processes(driver: LocalDriver) -> None:
    name = apply_all(driver, state(replicas=2, fields={"v": 1}))
    old = driver.processes(name)
    apply_all(driver, state(replicas=2, fields={"v": 2}))
    new = driver.processes(name)
    assert len(new) == 2 and not set(old) & set(new)


def test_same_apply_twice_changes_nothing(driver: LocalDriver) -> None:
    name = apply_all(driver, state(replicas=2))
    pids = driver.processes(name)
    apply_all(driver, state(replicas=2))
    assert driver.processes(name) == pids


def test_delete_stops_everything(driver: LocalDriver) -> None:
    name = apply_all(driver, state(replicas=2))
    pids = driver.processes(name)
    assert driver.delete("Deployment", name) and driver.delete("Secret", name)
    assert driver.delete("NetworkPolicy", name)
    assert not driver.delete("Deployment", name)
    assert all(not alive(pid) for pid in pids)
    assert driver.list_managed() == []


@pytest.mark.parametrize("given_workdir", [True, False], ids=["given folder", "own temp folder"])
def test_close_stops_the_replicas_and_removes_only_a_folder_of_its_own(
    tmp_path: Path, given_workdir: bool
) -> None:
    local = LocalDriver(
        command=STUB,
        workdir=tmp_path / "logs" if given_workdir else None,
        base_env=dict(os.environ),
        cwd=ROOT,
    )
    name = apply_all(local, state(replicas=2))
    pids = local.processes(name)
    [log, *_] = [path.parent for path in local.workdir.glob("*.log")]
    local.close()
    assert all(not alive(pid) for pid in pids)
    assert log.exists() == given_workdir


def test_a_crashing_worker_is_not_ready_and_says_why(driver: LocalDriver) -> None:
    name = apply_all(driver, state(replicas=1, fields={"crash": "cannot import component"}))

    def reported() -> bool:
        [readiness] = driver.readiness()
        return readiness.error is not None

    wait_until(reported)
    [readiness] = driver.readiness()
    assert not readiness.is_ready
    assert readiness.error is not None
    assert "exit code 3" in readiness.error and "cannot import component" in readiness.error
    assert driver.processes(name) == []  # restart waits (back-off)


def test_list_managed_by_selector(driver: LocalDriver) -> None:
    apply_all(driver, state(flow_id="f1"))
    apply_all(driver, state(flow_id="f2"))
    kinds = sorted(o.kind for o in driver.list_managed(flow_selector("f1")))
    assert kinds == ["Deployment", "NetworkPolicy", "Secret"]
    assert len(driver.list_managed()) == 6  # three objects of each of two flows


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        pytest.param("a=1", {"a": "1"}, True, id="equal"),
        pytest.param("a=1", {"a": "2"}, False, id="not equal"),
        pytest.param("a!=1", {}, True, id="not-equal on a missing label"),
        pytest.param("a,!b", {"a": ""}, True, id="exists and not exists"),
        pytest.param("a,!b", {"a": "", "b": ""}, False, id="a forbidden label"),
        pytest.param("", {}, True, id="empty selects all"),
    ],
)
def test_selector_table(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert selector_matches(selector, labels) is expected


def test_driver_is_chosen_by_settings_only(tmp_path: Path) -> None:
    base = {"REDIS_URL": "redis://x:1", "ORCHESTRATOR_KEY": "k" * 32, "ORCHESTRATOR_AUTH": "off"}
    local = make_driver(
        Settings.from_env({**base, "ORCHESTRATOR_DEPLOY_DRIVER": "local"}), workdir=tmp_path
    )
    assert isinstance(local, LocalDriver)
    from shared.adapters.kubernetes import KubernetesDriver

    kube = make_driver(
        Settings.from_env({**base, "ORCHESTRATOR_DEPLOY_DRIVER": "kubernetes"}),
        host="http://127.0.0.1:1",
    )
    assert isinstance(kube, KubernetesDriver)
    kube.close()
