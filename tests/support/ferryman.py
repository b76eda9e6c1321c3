"""The real `@openintegrationhub/ferryman` (npm) and a tiny OIH connector for it
(tests/fixtures/oih_connector: component.json, `emitTwo` emits two records, `fail` throws).

`npm ci` installs the pinned package-lock into a cached folder
(~/.cache/component-orchestrator/ferryman-<lock digest>, or $CO_NPM_CACHE_DIR), once per lock;
later sessions reuse it. A ferryman process runs `node runGlobal.js` (what a connector's
`npm start` runs) in the connector's folder with the ELASTICIO_* environment deploy gives a
step, in its own process group, stopped (SIGTERM, then SIGKILL) at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

CONNECTOR = Path(__file__).resolve().parents[1] / "fixtures" / "oih_connector"
RUN_GLOBAL = Path("node_modules/@openintegrationhub/ferryman/runGlobal.js")
NPM_TIMEOUT_SECONDS = 600


def cache_root() -> Path:
    configured = os.environ.get("CO_NPM_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "component-orchestrator"


def install_ferryman() -> Path:
    """The folder whose node_modules holds ferryman (npm ci once per package-lock)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail(
            "node and npm are needed for the ferryman tests (Node 20: apt-get install nodejs npm)"
        )
    lock = (CONNECTOR / "package-lock.json").read_bytes()
    folder = cache_root() / f"ferryman-{hashlib.sha256(lock).hexdigest()[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # parallel sessions: one installs, the others wait
        if not (folder / RUN_GLOBAL).exists():
            for name in ("package.json", "package-lock.json"):
                shutil.copy(CONNECTOR / name, folder / name)
            done = subprocess.run(
                ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                cwd=folder, capture_output=True, text=True, timeout=NPM_TIMEOUT_SECONDS,
            )  # fmt: skip
            if done.returncode != 0 or not (folder / RUN_GLOBAL).exists():
                pytest.fail(
                    f"npm ci of ferryman failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
                )
    return folder


@dataclass
class FerrymanProcess:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


class FerrymanLauncher:
    def __init__(self, modules: Path, logs: Path) -> None:
        self.modules = modules
        self.logs = logs
        self.started: list[FerrymanProcess] = []

    def start(self, env: Mapping[str, str], *, name: str = "ferryman") -> FerrymanProcess:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}-{len(self.started)}.log"
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LOG_LEVEL": "info", **env}
        process = subprocess.Popen(
            ["node", str(self.modules / RUN_GLOBAL)],
            cwd=CONNECTOR, env=environment, stdin=subprocess.DEVNULL,
            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        started = FerrymanProcess(process, log)
        self.started.append(started)
        return started

    def stop_all(self) -> None:
        for started in self.started:
            started.stop()


@pytest.fixture(scope="session")
def ferryman_modules() -> Path:
    return install_ferryman()


@pytest.fixture()
def ferryman(ferryman_modules: Path, tmp_path: Path) -> Iterator[FerrymanLauncher]:
    launcher = FerrymanLauncher(ferryman_modules, tmp_path / "ferryman")
    try:
        yield launcher
    finally:
        launcher.stop_all()


def wait_for(condition: object, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
