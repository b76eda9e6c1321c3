"""A real RabbitMQ (Debian's rabbitmq-server) for the tests that speak AMQP: OIH's event bus
and ferryman's step transport.

Started once per session, on first use, as an unprivileged process (user `nobody` when the
suite runs as root) in a temporary folder, on 127.0.0.1 with free AMQP, distribution, epmd and
management ports (the management plugin's HTTP API is how an operator, and our deploy, create
vhosts, users and permissions), no system service involved; stopped, epmd included, at the end.
`make services` installs the package when it is missing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from shared.local.embedded_redis import free_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
START_TIMEOUT_SECONDS = 180.0  # a cold Erlang VM on a busy 2-core machine


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@dataclass
class RabbitMq:
    folder: Path
    amqp_port: int
    dist_port: int
    epmd_port: int
    node: str
    management_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def api(self, method: str, path: str, body: object = None) -> requests.Response:
        """The management HTTP API as the administrator (guest, from loopback)."""
        answer = requests.request(
            method, f"{self.management_url}/api/{path}", json=body, auth=("guest", "guest"),
            timeout=30,
        )  # fmt: skip
        answer.raise_for_status()
        return answer

    @property
    def url(self) -> str:
        """The AMQP URL of the default vhost (guest may log in from loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    def url_for(self, vhost: str, user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.amqp_port}/{vhost}"

    def env(self) -> dict[str, str]:
        base = self.folder
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(base),  # the Erlang cookie goes here
            "LANG": "C.UTF-8",
            "RABBITMQ_HOME": "/usr/lib/rabbitmq",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
        }

    def _as_unprivileged(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]

    def start(self) -> RabbitMq:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (self.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {self.management_port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "vm_memory_high_watermark.absolute = 512MiB\n"
            "disk_free_limit.absolute = 50MB\n"
        )
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for path in [self.folder, *self.folder.rglob("*")]:
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
        log = (self.folder / "server.out").open("wb")
        self.process = subprocess.Popen(
            [*self._as_unprivileged(), SERVER],
            env=self.env(),
            cwd=self.folder,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = (self.folder / "server.out").read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"rabbitmq-server did not start:\n{output}")
            time.sleep(0.5)
        return self

    def ready(self) -> bool:
        if not (_listening(self.amqp_port) and _listening(self.management_port)):
            return False
        try:
            import pika

            connection = pika.BlockingConnection(pika.URLParameters(self.url))
            connection.close()
            return True
        except Exception:  # still booting: the listener opens before the broker accepts
            return False

    def ctl(self, *args: str) -> str:
        done = subprocess.run(
            [*self._as_unprivileged(), CTL, "-n", self.node, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def new_vhost(self) -> str:
        """A fresh vhost guest may use: each test starts with no exchanges or queues."""
        vhost = f"t-{uuid.uuid4().hex[:12]}"
        self.api("PUT", f"vhosts/{vhost}")
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        self.api("PUT", f"permissions/{vhost}/guest", everything)
        return vhost

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        # epmd daemonizes out of the server's group: stop the one on our port
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                [epmd, "-port", str(self.epmd_port), "-kill"],
                env=self.env(),
                capture_output=True,
                timeout=10,
            )


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMq]:
    if not os.path.exists(SERVER):
        pytest.fail("rabbitmq-server is not installed: `make services` installs it (Debian)")
    # not under pytest's own temp root: that is private to the user running the suite, and
    # the server runs as another (unprivileged) user
    folder = Path(tempfile.mkdtemp(prefix="co-rabbitmq-"))
    server = RabbitMq(
        folder=folder,
        amqp_port=free_port(),
        dist_port=free_port(),
        epmd_port=free_port(),
        node=f"co-test-{uuid.uuid4().hex[:8]}@localhost",
        management_port=free_port(),
    ).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def amqp_vhost(rabbitmq: RabbitMq) -> str:
    """The AMQP URL of a vhost of this test's own."""
    return rabbitmq.url_for(rabbitmq.new_vhost())
