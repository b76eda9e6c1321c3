"""The real RabbitMQ the AMQP tests use (tests/support/rabbitmq.py): it runs unprivileged on
loopback, routes a topic exchange as OIH's event bus does, and gives each test its own vhost."""

from __future__ import annotations

import os
from pathlib import Path

import pika
import pytest

from tests.support.rabbitmq import RabbitMq


def test_a_topic_exchange_routes_by_event_name_like_the_hub_bus(amqp_vhost: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_vhost))
    try:
        channel = connection.channel()
        channel.exchange_declare("event-bus", exchange_type="topic", durable=True)
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, "event-bus", routing_key="flow.*")
        for name in ("flow.starting", "component.starting", "flow.stopping"):
            channel.basic_publish(
                "event-bus", name, f'{{"headers": {{"name": "{name}"}}}}'.encode()
            )
        got = []
        for _ in range(10):
            method, _, _body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            got.append(method.routing_key)
        assert got == ["flow.starting", "flow.stopping"]
    finally:
        connection.close()


def test_each_test_vhost_starts_empty(rabbitmq: RabbitMq) -> None:
    first, second = rabbitmq.new_vhost(), rabbitmq.new_vhost()
    with pika.BlockingConnection(pika.URLParameters(rabbitmq.url_for(first))) as connection:
        connection.channel().queue_declare("only-in-first", durable=True)
    with pika.BlockingConnection(pika.URLParameters(rabbitmq.url_for(second))) as connection:
        channel = connection.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            channel.queue_declare("only-in-first", passive=True)


def test_the_server_runs_unprivileged_in_its_own_folder(rabbitmq: RabbitMq) -> None:
    assert rabbitmq.process is not None and rabbitmq.process.poll() is None
    pid = Path(rabbitmq.folder / "rabbitmq.pid").read_text().strip()
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert uid != 0 or os.geteuid() != 0
    assert str(rabbitmq.folder) in Path(f"/proc/{pid}/environ").read_bytes().decode(
        errors="replace"
    )
