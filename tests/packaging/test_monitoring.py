"""knative/monitoring: the alert rules pass promtool (and fire on a flood and a penalty), the
dashboard has what Grafana imports, and a real Prometheus scraping a short real
`orchestrator run` finds a series for every panel's query."""

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
import requests
import yaml

from shared.local.embedded_redis import free_port

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "knative" / "monitoring"
FIXTURES = ROOT / "tests" / "fixtures" / "monitoring"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="Debian prometheus is not installed (make services installs it)",
)


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((MONITORING / "dashboard.json").read_text())
    return document


def panel_queries() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel["targets"]
    ]


def rules_file(folder: Path) -> Path:
    """The PrometheusRule's groups as a plain Prometheus rules file."""
    rule = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


# --------------------------------------------------------------------------- the rules
@needs_prometheus
def test_the_alert_rules_are_valid_prometheus_rules(tmp_path: Path) -> None:
    checked = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(rules_file(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert re.search(r"SUCCESS: (\d+) rules found", checked.stdout)


@needs_prometheus
def test_the_alerts_fire_on_a_flood_and_a_suspension_and_not_otherwise(tmp_path: Path) -> None:
    rules_file(tmp_path)
    shutil.copy(FIXTURES / "alerts-test.yaml", tmp_path / "alerts-test.yaml")
    tested = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(tmp_path / "alerts-test.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    rule = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]
    assert len(alerts) >= 8
    for alert in alerts:
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}, alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


# --------------------------------------------------------------------------- the dashboard
WANTED_PANELS = (
    "orchestrator_admissions_total",
    "orchestrator_deferrals_total",
    "orchestrator_admission_wait_seconds_bucket",
    "orchestrator_schedule_lag_seconds_bucket",
    "orchestrator_skips_total",
    "orchestrator_penalties_total",
    "orchestrator_deploy_seconds_bucket",
    "orchestrator_handle_seconds_bucket",
    "orchestrator_outbox_backlog",
    "orchestrator_dead_letters_total",
)


def test_the_dashboard_has_what_grafana_imports() -> None:
    """What Grafana's import needs (schemaVersion, uid, panels with ids, gridPos, a Prometheus
    datasource variable and per-target refIds) and what the README promises."""
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"]) and board["title"]
    (variable,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    assert {i["pluginId"] for i in board["__inputs"]} == {"prometheus"}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in board["panels"]:
        assert panel["type"] == "timeseries" and panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"] == {"type": "prometheus", "uid": "${" + variable["name"] + "}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        assert all(target["expr"].strip() for target in panel["targets"])
    exprs = " ".join(expr for _, expr in panel_queries())
    assert [series for series in WANTED_PANELS if series not in exprs] == []


def test_the_monitoring_kustomization_renders_the_dashboard_configmap() -> None:
    kubectl = shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(MONITORING)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "PodMonitor", "PrometheusRule"]
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["dashboard.json"]) == dashboard()


# --------------------------------------------------------------------------- a real run
class System:
    """`orchestrator run` (with its demo: floods, a chatty tenant, cron flows) as a process."""

    def __init__(self, state: Path) -> None:
        self.state = state
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DEMO")}
        env["PYTHONUNBUFFERED"] = "1"
        self.log = (state.parent / "run.out").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli.main", "run", "--broker-port", "0",
             "--state-dir", str(state)],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def session(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        path = self.state / "session.json"
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.state.parent / "run.out").read_text()
            if path.exists():
                try:
                    found: dict[str, Any] = json.loads(path.read_text())
                    return found
                except ValueError:
                    pass
            time.sleep(0.2)
        raise AssertionError("orchestrator run did not start")

    def send(self, *args: str, env: dict[str, str] | None = None) -> None:
        sent = subprocess.run(
            [sys.executable, "-m", "shared.cli.main", "send", *args,
             "--state-dir", str(self.state)],
            cwd=ROOT, capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})},
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
        self.log.close()


@pytest.fixture()
def system(tmp_path: Path) -> Iterator[System]:
    running = System(tmp_path / "state")
    yield running
    running.stop()


def start_prometheus(folder: Path, targets: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    rules_file(folder)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(folder / "rules.yaml")],
        "scrape_configs": [
            {"job_name": name, "static_configs": [{"targets": [url.split("://", 1)[1]]}]}
            for name, url in sorted(targets.items())
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={folder / 'prometheus.yml'}",
         f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=(folder / "prometheus.out").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return process, f"http://127.0.0.1:{port}"


def query(prometheus: str, expr: str) -> list[Any]:
    # Grafana's $__rate_interval is at least four scrape intervals; 15s covers ours (1s)
    promql = expr.replace("$__rate_interval", "15s")
    answer = requests.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    assert answer.status_code == 200, f"{promql}: {answer.text}"
    result: list[Any] = answer.json()["data"]["result"]
    return result


@needs_prometheus
@pytest.mark.slow
def test_a_real_prometheus_finds_a_series_for_every_panel_of_a_short_real_run(
    system: System, tmp_path: Path
) -> None:
    session = system.session(timeout=60)
    targets = {**session["functions"], "broker": session["broker_url"]}
    prometheus, url = start_prometheus(tmp_path, targets)
    try:
        # beside the demo's traffic: a flow slower than its every-second schedule (skips) and
        # an event with a forged token (refused, so dead-lettered by the broker)
        flow = {
            "id": "monitoring-overlap",
            "tenant": "monitoring",
            "owners": [{"id": "mona", "type": "user"}],
            "cron": "* * * * * *",
            "graph": {
                "nodes": [{"id": "work", "componentId": "demo-step", "function": "process",
                           "fields": {"seconds": 3, "count": 0}}],
                "edges": [],
            },
            "flowSettings": {"overlapPolicy": "skip", "spread": False},
        }  # fmt: skip
        (tmp_path / "flow.json").write_text(json.dumps(flow))
        system.send("flow.starting", str(tmp_path / "flow.json"), "--tenant", "monitoring")
        (tmp_path / "stop.json").write_text(json.dumps({"id": "no-such-flow"}))
        system.send(
            "flow.stopping", str(tmp_path / "stop.json"), env={"ORCHESTRATOR_AUTHTOKEN": "forged"}
        )
        missing = panel_queries()
        deadline = time.monotonic() + 150
        while missing and time.monotonic() < deadline:
            assert system.process.poll() is None, (tmp_path / "run.out").read_text()[-3000:]
            time.sleep(2)
            missing = [(title, expr) for title, expr in missing if not query(url, expr)]
        assert missing == [], "panels without a series: " + ", ".join(t for t, _ in missing)
        rules = requests.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        loaded = [rule for group in rules for rule in group["rules"]]
        assert len(loaded) >= 8 and {rule["health"] for rule in loaded} == {"ok"}
    finally:
        prometheus.send_signal(signal.SIGTERM)
        prometheus.wait(timeout=30)
