"""Attack: a component run by the local driver reads the orchestrator's secrets from its own
environment. The deploy process (real LocalDriver, real worker processes) holds
ORCHESTRATOR_KEY, IAM_SERVICE_TOKEN and the store's REDIS_URL; a worker sees none of them."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from shared.adapters.local_driver import LocalDriver
from tests.adapters.test_local_driver import apply_all, state

SECRETS = {
    "ORCHESTRATOR_KEY": "the-orchestrator-key-0123456789abcdef",
    "IAM_SERVICE_TOKEN": "iam-service-token",
    "REDIS_URL": "redis://default:store-password@127.0.0.1:6379/0",
    "AWS_SECRET_ACCESS_KEY": "ambient-aws-secret",
    "SOMETHING_ELSE": "not on the allow-list",
}


def test_workers_get_the_secret_and_an_allow_list_only(tmp_path: Path) -> None:
    driver = LocalDriver(
        command=[sys.executable, "-m", "tests.fakes.step_worker"],
        workdir=tmp_path / "logs",
        base_env={**os.environ, **SECRETS, "WORKER_RECORD_DIR": str(tmp_path)},
        pass_env=("WORKER_RECORD_DIR",),
    )
    try:
        apply_all(driver, state(), token="flow-token")
        deadline = time.monotonic() + 20
        while not list(tmp_path.glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        [record] = list(tmp_path.glob("*.json"))
        env = json.loads(record.read_text())
    finally:
        driver.close()
    assert env["FLOW_TOKEN"] == "flow-token" and env["FLOW_ID"] == "f1"
    leaked = {name for name, value in SECRETS.items() if env.get(name) == value}
    assert leaked == set()
    assert not any(value in json.dumps(env) for value in SECRETS.values())
