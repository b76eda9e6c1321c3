"""knative/ferryman (QUEUE_BACKEND=amqp): the backchannel's and the functions' manifests agree
with the code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@cache
def rendered() -> tuple[dict[str, Any], ...]:
    import yaml

    kubectl = shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "knative" / "overlays" / "dev-ferryman")],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def named(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in rendered() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container.get("env", [])}


def test_the_backchannel_runs_its_command_with_secrets_by_reference_and_a_sink() -> None:
    deployment = named("Deployment", "ferryman-backchannel")
    spec = deployment["spec"]
    assert spec["replicas"] == 1  # one consumer: a message's replies are read in order
    (container,) = spec["template"]["spec"]["containers"]
    assert container["command"][:2] == ["orchestrator", "backchannel"]
    assert container["image"].startswith("localhost:5001/component-orchestrator")
    env = env_of(container)
    for name in ("AMQP_URL", "REDIS_URL", "ORCHESTRATOR_KEY"):
        assert "value" not in env[name] and "secretKeyRef" in env[name]["valueFrom"], name
    assert container["securityContext"]["runAsNonRoot"] is True
    binding = named("SinkBinding", "ferryman-backchannel-sink")
    assert binding["spec"]["subject"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "ferryman-backchannel"
    }  # fmt: skip
    assert binding["spec"]["sink"]["ref"]["kind"] == "Broker"


def test_deploy_and_step_execute_run_the_amqp_backend_and_start_with_it() -> None:
    stand_ins = {
        "REDIS_URL": "redis://redis.example:6379/0",
        "ORCHESTRATOR_KEY": "k" * 48,
        "IAM_SERVICE_TOKEN": "t",
        "AMQP_URL": "amqp://co:pw@rabbitmq.example:5672/hub",
        "AMQP_MANAGEMENT_URL": "http://co:pw@rabbitmq.example:15672",
    }
    (config,) = [
        d for d in rendered()
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("orchestrator-settings")
    ]  # fmt: skip
    settings_map = config["data"]
    for name in ("deploy", "step-execute"):
        (container,) = named("Service", name)["spec"]["template"]["spec"]["containers"]
        env = env_of(container)
        assert env["QUEUE_BACKEND"]["value"] == "amqp"
        for secret in ("AMQP_URL", "AMQP_MANAGEMENT_URL"):
            assert env[secret]["valueFrom"]["secretKeyRef"]["name"] == "orchestrator-amqp"
        literal = {k: str(v["value"]) for k, v in env.items() if "value" in v}
        settings = Settings.from_env({**settings_map, **stand_ins, **literal})
        assert settings.queue_backend == "amqp"


def test_the_backchannel_serves_metrics_where_the_pod_monitor_scrapes() -> None:
    import argparse

    import yaml

    from shared.cli import backchannel

    template = named("Deployment", "ferryman-backchannel")["spec"]["template"]
    (container,) = template["spec"]["containers"]
    parser = argparse.ArgumentParser()
    backchannel.add_parser(parser.add_subparsers())
    args = parser.parse_args(container["command"][1:])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    monitor = yaml.safe_load((ROOT / "knative" / "monitoring" / "podmonitor.yaml").read_text())
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert args.metrics_port and ports[endpoint["port"]] == args.metrics_port
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    # and only Prometheus may reach it, on that port alone
    policy = named("NetworkPolicy", "ferryman-backchannel-metrics-only")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= (
        template["metadata"]["labels"].items()
    )
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": endpoint["port"]}]
    assert rule["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
