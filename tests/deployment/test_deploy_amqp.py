"""Deploy on the amqp backend (existing OIH connector images, docs/oih.md): what a step's
Secret and Deployment hold, and the flow's RabbitMQ topology and user on a real RabbitMQ."""

from __future__ import annotations

import base64
import json
from typing import Any

import pika
import pytest
from redis import Redis

from shared import keys
from shared.adapters.component_repository import CatalogueComponentRepository
from shared.adapters.local_driver import LocalDriver
from shared.adapters.rabbitmq import RabbitMqFlowAccess, RabbitMqManagement, vhost_of
from shared.clock import SystemClock
from shared.deployment.desired_state import (
    desired_hash,
    flow_desired_state,
    suspended,
    with_secret_values,
)
from shared.deployment.queue_credentials import AmqpQueueCredentials
from shared.deployment.reconcile import Deployer
from shared.deployment.records import TargetRecord
from shared.deployment.services import DeployServices, NoFlowTokens
from shared.deployment.worker_settings import WorkerSettings
from shared.events import FlowDocument
from shared.model.policy import TenantLimits
from shared.ports import ferryman as names
from shared.ports.components import Component
from tests.conftest import TEST_KEY
from tests.support.rabbitmq import RabbitMq
from tests.support.system import wait_for

WORKER = WorkerSettings(
    queue_backend="amqp",
    queue_url="amqp://rabbitmq.flows.svc.cluster.local:5672/hub",
    k_sink="http://broker",
    secret_service_url="http://secret-service.oih.svc.cluster.local:3000/api/v1/",
    hub_api_uri="http://component-orchestrator.oih.svc.cluster.local",
)


def flow_document(flow_id: str = "f1") -> FlowDocument:
    return FlowDocument.parse({
        "id": flow_id, "tenant": "acme", "owners": [{"id": "u1", "type": "user"}],
        "graph": {"nodes": [{"id": "get", "componentId": "c", "function": "getObjects",
                             "credentials_id": "sec-1", "fields": {"a": 1}},
                            {"id": "put", "componentId": "c", "function": "upsert"}],
                  "edges": [{"source": "get", "target": "put"}]},
    })  # fmt: skip


def secret_env(manifest: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in manifest["data"].items()}


def test_a_step_gets_ferrymans_environment_and_runs_its_images_entrypoint() -> None:
    component = Component(id="c", name="c", image="reg/oih/connector:1", entrypoint="x.y")
    desired = flow_desired_state(flow_document(), {"c": component}, TenantLimits(), WORKER,
                                 credentials_generation=1)  # fmt: skip
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for manifest in desired.manifests:
        by_kind.setdefault(manifest["kind"], []).append(manifest)
    secret = next(s for s in by_kind["Secret"] if "get" in json.dumps(s["metadata"]))
    env = secret_env(secret)
    assert {k: v for k, v in env.items() if k.startswith("ELASTICIO_")} == {
        "ELASTICIO_FLOW_ID": "f1",
        "ELASTICIO_STEP_ID": "get",
        "ELASTICIO_COMP_ID": "c",
        "ELASTICIO_API_URI": "http://component-orchestrator.oih.svc.cluster.local",
        "ELASTICIO_LISTEN_MESSAGES_ON": "flow-f1:get:messages",
        "ELASTICIO_NODE_EXCHANGE": "flow-f1",
        "ELASTICIO_BACKCHANNEL_EXCHANGE": "orchestrator_backchannel",
        "ELASTICIO_OUTPUT_ROUTING_KEY": "orchestrator_backchannel.input",
        "ELASTICIO_ERROR_ROUTING_KEY": "orchestrator_backchannel.error",
        "ELASTICIO_STATE_ROUTING_KEY": "orchestrator_backchannel.step_state",
        "ELASTICIO_REBOUND_ROUTING_KEY": "flow-f1.get.rebound",
        "ELASTICIO_SNAPSHOT_ROUTING_KEY": "flow-f1.get.snapshot",
        "ELASTICIO_OUTGOING_MESSAGE_SIZE_LIMIT": str(256 * 1024),
        "ELASTICIO_SECRET_SERVICE_BASE_URL": "http://secret-service.oih.svc.cluster.local:3000/api/v1",
    }  # fmt: skip
    assert env["STEP_QUEUE"] == keys.step_queue("f1", "get")
    assert names.AMQP_URI_VARIABLE not in env  # the password enters at apply time only
    for deployment in by_kind["Deployment"]:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert "command" not in container  # ferryman: the image's own entrypoint
        assert container["securityContext"]["runAsNonRoot"] is True
    # the flow's pods may reach RabbitMQ's AMQP port
    assert "5672" in json.dumps(by_kind["NetworkPolicy"])
    # the apply-time URI is not part of the desired state
    applied = with_secret_values(secret, {names.AMQP_URI_VARIABLE: "amqp://u:p@h:5672/v"})
    assert secret_env(applied)[names.AMQP_URI_VARIABLE] == "amqp://u:p@h:5672/v"
    replaced = [applied if m is secret else m for m in desired.manifests]
    assert desired_hash(replaced) == desired.hash


def test_the_flows_user_and_queues_come_and_go_with_the_flow(
    rabbitmq: RabbitMq, amqp_vhost: str, redis: Redis
) -> None:
    management = f"http://guest:guest@127.0.0.1:{rabbitmq.management_port}"
    credentials = AmqpQueueCredentials(
        redis, RabbitMqFlowAccess(amqp_vhost, management), TEST_KEY, amqp_vhost
    )
    generation = credentials.rotate("f1") or 1
    queues = [keys.step_queue("f1", "get"), keys.step_queue("f1", "put")]
    values = credentials.grant("f1", queues, generation)
    url = values[names.AMQP_URI_VARIABLE]
    assert url.startswith("amqp://co-flow-f1:") and "guest" not in url
    connection = pika.BlockingConnection(pika.URLParameters(url))  # the flow's own user
    try:
        channel = connection.channel()
        assert (
            channel.queue_declare("flow-f1:get:messages", passive=True).method.consumer_count == 0
        )
        channel.basic_consume("flow-f1:put:messages", lambda *_: None)
        assert credentials.consumers("f1", "put") == 1  # what Ready waits for
        assert credentials.consumers("f1", "get") == 0
    finally:
        connection.close()
    admin = RabbitMqManagement(management, vhost_of(amqp_vhost))
    assert admin.user_exists("co-flow-f1")
    credentials.revoke("f1")
    assert not admin.user_exists("co-flow-f1")
    guest = pika.BlockingConnection(pika.URLParameters(amqp_vhost))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as gone:
            guest.channel().queue_declare("flow-f1:get:messages", passive=True)
        assert gone.value.reply_code == 404  # its queues are gone with it
    finally:
        guest.close()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.URLParameters(url))


def test_a_step_is_ready_when_ferryman_consumes_and_a_suspended_flow_needs_none(
    rabbitmq: RabbitMq, amqp_vhost: str, redis: Redis, tmp_path: Any
) -> None:
    """Ready = the queue's consumer count, not a live process; at 0 replicas (suspended by a
    penalty) nothing has to consume."""
    management = f"http://guest:guest@127.0.0.1:{rabbitmq.management_port}"
    credentials = AmqpQueueCredentials(
        redis, RabbitMqFlowAccess(amqp_vhost, management), TEST_KEY, amqp_vhost
    )
    component = Component(id="c", name="c", image="reg/oih/connector:1")
    generation = credentials.rotate("f1") or 1
    desired = flow_desired_state(flow_document(), {"c": component}, TenantLimits(), WORKER,
                                 credentials_generation=generation)  # fmt: skip
    # a process that lives but never consumes (as a ferryman that cannot reach its queue)
    driver = LocalDriver(command=("sleep", "60"), workdir=tmp_path / "workers", images={})
    services = DeployServices(driver, CatalogueComponentRepository(), NoFlowTokens(), WORKER,
                              credentials)  # fmt: skip
    deployer = Deployer(redis, services, SystemClock(), ready_timeout=60)
    record = TargetRecord(kind="flow", id="f1", status="deploying", desired_hash=desired.hash,
                          manifests=desired.manifests, tenant="acme", user="u1")  # fmt: skip
    try:
        values = credentials.grant("f1", [keys.step_queue("f1", n) for n in ("get", "put")],
                                   generation)  # fmt: skip
        deployer.apply(record, desired.manifests, None, values)
        verdict = deployer.verdict(record, desired.manifests)
        assert not verdict.ready
        assert "not yet consuming: get 0/1, put 0/1" in verdict.summary
        connection = pika.BlockingConnection(pika.URLParameters(values[names.AMQP_URI_VARIABLE]))
        try:
            channel = connection.channel()
            for step in ("get", "put"):
                channel.basic_consume(names.messages_queue("f1", step), lambda *_: None)
            assert deployer.verdict(record, desired.manifests).ready
        finally:
            connection.close()
        # the consumers are gone again (RabbitMQ drops them with their connection)
        wait_for(lambda: not deployer.verdict(record, desired.manifests).ready, "not ready")
        down = suspended(desired.manifests)
        deployer.apply(record, down, None, values)
        assert deployer.verdict(record, down).ready  # 0 replicas: nothing has to consume
    finally:
        driver.close()
        credentials.revoke("f1")
