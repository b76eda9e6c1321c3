"""A password-protected Redis primary with one replica (real redis-server processes in a temp
dir): what a production store looks like, so ACL tests cannot pass through an open `default`."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from shared.local.embedded_redis import free_port, server_binary

ADMIN_PASSWORD = "admin-password-of-the-orchestrator"


@dataclass
class Node:
    port: int
    process: subprocess.Popen[bytes]

    def client(self) -> Redis:
        return Redis(port=self.port, password=ADMIN_PASSWORD, socket_timeout=5)

    @property
    def url(self) -> str:
        return f"redis://:{ADMIN_PASSWORD}@127.0.0.1:{self.port}/0"


def _start(directory: Path, *extra: str) -> Node:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [
        server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
        "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction",
        "--requirepass", ADMIN_PASSWORD, "--masterauth", ADMIN_PASSWORD, *extra,
    ]  # fmt: skip
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    node = Node(port, process)
    deadline = time.monotonic() + 10
    while True:
        try:
            node.client().ping()
            return node
        except RedisError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"redis did not start on {port}") from None
            time.sleep(0.05)


@contextmanager
def primary_with_replica(directory: Path) -> Iterator[tuple[Node, Node]]:
    primary = _start(directory / "primary")
    replica = _start(directory / "replica", "--replicaof", "127.0.0.1", str(primary.port))
    try:
        deadline = time.monotonic() + 10
        while primary.client().info("replication").get("connected_slaves", 0) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not connect")
            time.sleep(0.05)
        yield primary, replica
    finally:
        for node in (replica, primary):
            node.process.terminate()
            node.process.wait(timeout=10)
