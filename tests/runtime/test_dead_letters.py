"""The Knative dead-letter sink (`orchestrator dead-letters`): records what Knative gave up on."""

from __future__ import annotations

import base64

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from redis import Redis

from shared.events import types as t
from shared.runtime.cloudevent_server import CloudEventServer
from shared.runtime.dead_letters import RedisDeadLetters, sink

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXh4eA"


def test_a_dead_lettered_event_is_kept_in_redis_without_its_token(redis: Redis) -> None:
    lines: list[str] = []
    store = RedisDeadLetters(redis, maxlen=100)
    server = CloudEventServer(sink(store, lambda: 1767225600.0, lines.append), name="dl").start()
    try:
        event = CloudEvent(
            {
                "type": t.FLOW_STARTED,
                "source": "/component-orchestrator/deploy",
                "id": "e-1",
                "datacontenttype": "application/json",
                "authtoken": TOKEN,
                "tenant": "acme",
                "knativeerrorcode": "503",
                "knativeerrordest": "http://flow-start.orchestrator.svc.cluster.local",
                "knativeerrordata": base64.b64encode(b"echoed " + TOKEN.encode()).decode(),
            },
            {"id": "f1", "password": "hunter2"},
        )
        headers, body = to_binary(event)
        assert requests.post(server.url, headers=headers, data=body, timeout=5).status_code == 202
    finally:
        server.stop()
    [letter] = store.read()
    assert letter.status == 503 and letter.subscriber.startswith("http://flow-start")
    assert letter.attributes["id"] == "e-1" and letter.attributes["tenant"] == "acme"
    assert "authtoken" not in letter.attributes and letter.stripped == ["authtoken"]
    assert "knativeerrordata" not in letter.attributes  # a subscriber's body may echo anything
    assert letter.data == {"id": "f1", "password": "[REDACTED]"}
    raw = str(redis.xrange("co:broker:dead-letters"))
    assert TOKEN not in raw and "hunter2" not in raw
    assert lines and TOKEN not in lines[0] and "flow.started id=e-1" in lines[0]


def test_the_stream_is_capped(redis: Redis) -> None:
    store = RedisDeadLetters(redis, maxlen=10)
    accept = sink(store, lambda: 0.0, list[str]().append)
    for number in range(500):
        accept(CloudEvent({"type": t.TICK, "source": "/s", "id": f"e{number}"}, {}))
    assert redis.xlen("co:broker:dead-letters") < 200
