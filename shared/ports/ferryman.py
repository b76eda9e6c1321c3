"""Ferryman's side of the AMQP step transport (QUEUE_BACKEND=amqp, docs/oih.md): the names of
exchanges, queues and routing keys OIH's QueueCreator gives a flow, the headers ferryman reads
from a step message and the claims it takes from its `orchestratorToken`, and the ELASTICIO_*
environment a step container gets. Names only: the adapter (shared/adapters/rabbitmq.py)
declares them, deploy puts them into the step's Secret, the backchannel reads the replies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# The one exchange every ferryman replies on, and our queue on it (OIH's names).
BACKCHANNEL_EXCHANGE = "orchestrator_backchannel"
BACKCHANNEL_QUEUE = BACKCHANNEL_EXCHANGE + ":messages"
INPUT_KEY = BACKCHANNEL_EXCHANGE + ".input"  # one per data message a step emits
STATE_KEY = BACKCHANNEL_EXCHANGE + ".step_state"  # "function complete": the message ended
ERROR_KEY = BACKCHANNEL_EXCHANGE + ".error"  # the action threw (or emitted `error`)
DEAD_LETTER_KEY = BACKCHANNEL_EXCHANGE + ".deadletter"
BACKCHANNEL_KEYS = (INPUT_KEY, STATE_KEY, ERROR_KEY)
COLLECTOR_EXCHANGE = "component-events-collector"  # snapshots (bound from every flow exchange)

# Message headers ferryman reads (lib/ferryman.js processMessage, readIncomingMessageHeaders).
TOKEN_HEADER = "orchestratorToken"
MESSAGE_HEADERS = ("taskId", "execId", "userId", "stepId", "messageId", "parentMessageId")
# The claims ferryman takes from the decoded token (it never verifies the signature).
FERRYMAN_CLAIMS = (
    "flowId", "stepId", "userId", "tenant", "function", "fields", "nodeSettings", "apiKey",
    "secretId",
)  # fmt: skip
# Ours beside them: which run, message and delivery a reply answers.
RUN_CLAIM, MESSAGE_CLAIM, ATTEMPT_CLAIM = "runId", "messageId", "attempt"
# Ferryman's limit on what it publishes; ours on a routed step message (routing.py).
OUTGOING_MESSAGE_SIZE_LIMIT = 256 * 1024

_ENV_PREFIX = "ELASTICIO_"
AMQP_URI_VARIABLE = _ENV_PREFIX + "AMQP_URI"  # carries the flow's password: apply time only


def flow_exchange(flow_id: str) -> str:
    return f"flow-{flow_id}"


def messages_queue(flow_id: str, step_id: str) -> str:
    return f"flow-{flow_id}:{step_id}:messages"


def rebounds_queue(flow_id: str, step_id: str) -> str:
    return f"flow-{flow_id}:{step_id}:rebounds"


def routing_key(flow_id: str, step_id: str, tag: str) -> str:
    """`input`, `rebound`, `requeue`, `snapshot`, `deadletter` (QueueCreator's tags)."""
    return f"flow-{flow_id}.{step_id}.{tag}"


def user_name(flow_id: str) -> str:
    return f"co-flow-{flow_id}"


def read_pattern(flow_id: str) -> str:
    """What a flow's RabbitMQ user may consume: its own steps' queues, nothing else."""
    return "^" + re.escape(f"flow-{flow_id}:")


def write_pattern(flow_id: str) -> str:
    """Where it may publish: the backchannel and its own exchange (rebounds)."""
    names = (BACKCHANNEL_EXCHANGE, flow_exchange(flow_id))
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def step_environment(
    flow_id: str, step_id: str, component_id: str, services: Mapping[str, str | None]
) -> dict[str, str]:
    """The ELASTICIO_* variables of one step (KubernetesDriver._prepareEnvVars and
    QueueCreator.createQueuesForFlowNode), except AMQP_URI (added at apply time).
    `services`: API_URI, SECRET_SERVICE_BASE_URL, SNAPSHOTS_SERVICE_BASE_URL,
    ATTACHMENT_STORAGE_SERVICE_BASE_URL, DATAHUB_BASE_URL (unset ones are left out)."""
    values: dict[str, str | None] = {
        "FLOW_ID": flow_id,
        "STEP_ID": step_id,
        "COMP_ID": component_id,
        "LISTEN_MESSAGES_ON": messages_queue(flow_id, step_id),
        "NODE_EXCHANGE": flow_exchange(flow_id),
        "BACKCHANNEL_EXCHANGE": BACKCHANNEL_EXCHANGE,
        "OUTPUT_ROUTING_KEY": INPUT_KEY,
        "ERROR_ROUTING_KEY": ERROR_KEY,
        "STATE_ROUTING_KEY": STATE_KEY,
        "REBOUND_ROUTING_KEY": routing_key(flow_id, step_id, "rebound"),
        "SNAPSHOT_ROUTING_KEY": routing_key(flow_id, step_id, "snapshot"),
        "OUTGOING_MESSAGE_SIZE_LIMIT": str(OUTGOING_MESSAGE_SIZE_LIMIT),
        **{name: (value or "").rstrip("/") or None for name, value in services.items()},
    }
    return {_ENV_PREFIX + name: value for name, value in values.items() if value}


@dataclass(frozen=True)
class BackchannelMessage:
    """One reply as read from the backchannel queue."""

    routing_key: str
    headers: dict[str, Any]
    body: bytes
    redelivered: bool = False


class FlowQueueAdmin(Protocol):
    """What deploy does on RabbitMQ for a flow (shared/adapters/rabbitmq.py)."""

    def grant(self, flow_id: str, steps: Sequence[str], username: str, password: str) -> None:
        """Declares the flow's exchange, queues and bindings and (re)writes its user with
        only its own permissions; raises TemporaryError / PermanentError."""
        ...

    def revoke(self, flow_id: str, username: str) -> None:
        """Deletes the flow's user, queues and exchange (absent is fine)."""
        ...

    def consumers(self, flow_id: str, step_id: str) -> int:
        """How many consumers (ferryman processes) read the step's messages queue."""
        ...
