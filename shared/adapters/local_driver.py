"""The `local` deploy driver (make run): each Deployment runs as `replicas` local processes.

Same interface as the Kubernetes driver. A process is `python -m shared.worker` (or the
command in ORCHESTRATOR_WORKER_COMMAND) with the Deployment's Secret as its environment, plus
only the few variables of ours a process needs to run at all (`INHERITED_VARIABLES`): a worker
runs a tenant's code, so it never sees ORCHESTRATOR_KEY, IAM_SERVICE_TOKEN or the orchestrator's
REDIS_URL that this process holds (docs/security.md).
Like a ReplicaSet it keeps the count: scale up starts processes, scale down stops the
newest, a dead process is restarted with a growing delay (CrashLoopBackOff) and its last
output line is the error readiness reports. A replica is Ready while its process is alive.
A container without a command runs its image's own entrypoint: for an OIH connector image
(QUEUE_BACKEND=amqp) that is ferryman, run here as `node runGlobal.js` in the connector's
folder, which `images` (ORCHESTRATOR_LOCAL_IMAGES: `image=folder,...`) names per image; the
ferryman script is the folder's own node_modules copy unless `ferryman_script` names one.
Everything lives in this process's memory: local mode only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from shared.ports.driver import (
    MANAGED_SELECTOR,
    PARENT_PID_VARIABLE,
    SECRET_HASH_ANNOTATION,
    Manifest,
    ObservedObject,
    Readiness,
    page_by_name,
    secret_environment,
)

log = logging.getLogger(__name__)

COMMAND_ENV = "ORCHESTRATOR_WORKER_COMMAND"
IMAGES_ENV = "ORCHESTRATOR_LOCAL_IMAGES"
# Objects kept but not enforced (no cluster; a Service: local workers listen on the host).
KEPT_KINDS = ("NetworkPolicy", "ServiceAccount", "Service")
FERRYMAN_SCRIPT = Path("node_modules/@openintegrationhub/ferryman/runGlobal.js")
# preloaded into each ferryman: it ends when this process is gone (PARENT_PID_VARIABLE)
PARENT_GUARD = Path(__file__).resolve().parents[1] / "data" / "parent_guard.js"
DEFAULT_COMMAND = (sys.executable, "-m", "shared.worker")
MAX_BACKOFF_SECONDS = 30.0
STOP_GRACE_SECONDS = 5.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# What a process needs from ours to start Python and find the project; nothing that grants
# access to anything (the Secret brings the rest).
INHERITED_VARIABLES = frozenset(
    {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV"}
)


def inherited_environment(base: Mapping[str, str], extra: Sequence[str] = ()) -> dict[str, str]:
    """The allow-listed part of `base` (plus the names in `extra`)."""
    allowed = INHERITED_VARIABLES | frozenset(extra)
    return {name: value for name, value in base.items() if name in allowed}


@dataclass
class _Replica:
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


@dataclass
class _Workload:
    manifest: Manifest
    replicas: list[_Replica] = field(default_factory=list)
    restarts: int = 0
    next_restart: float = 0.0
    last_error: str | None = None
    started: int = 0  # replicas ever started (names their log files)


def selector_matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    """Equality (`k=v`, `k!=v`) and existence (`k`, `!k`) terms, comma-separated."""
    for term in (t.strip() for t in (selector or "").split(",")):
        if not term:
            continue
        if "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _command_from_env() -> tuple[str, ...]:
    override = os.environ.get(COMMAND_ENV, "").strip()
    return tuple(shlex.split(override)) if override else DEFAULT_COMMAND


def _images_from_env() -> dict[str, Path]:
    pairs = (item.partition("=") for item in os.environ.get(IMAGES_ENV, "").split(","))
    return {image.strip(): Path(folder.strip()) for image, _, folder in pairs if image and folder}


class LocalDriver:
    def __init__(
        self,
        *,
        command: Sequence[str] | None = None,
        workdir: str | Path | None = None,
        base_env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        pass_env: Sequence[str] = (),
        images: Mapping[str, str | Path] | None = None,
        ferryman_script: str | Path | None = None,
    ) -> None:
        """`base_env` (default: ours) is filtered to the allow-list plus `pass_env` names."""
        self._command = tuple(command) if command else _command_from_env()
        # a folder of our own making (no `workdir` given) is removed again by close()
        self._owned_workdir = not workdir
        found = _images_from_env() if images is None else images
        self._images = {image: Path(folder) for image, folder in found.items()}
        self._ferryman_script = Path(ferryman_script) if ferryman_script else None
        self._workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="co-workers-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._base_env = inherited_environment(
            os.environ if base_env is None else base_env, pass_env
        )
        self._cwd = Path(cwd) if cwd else PROJECT_ROOT
        self._secrets: dict[str, Manifest] = {}
        # NetworkPolicies, ServiceAccounts, Services by (kind, name): kept, not enforced (processes
        # share a host); a flow's policy and account may carry the same name
        self._kept: dict[tuple[str, str], Manifest] = {}
        self._workloads: dict[str, _Workload] = {}
        self._lock = threading.RLock()

    @property
    def workdir(self) -> Path:
        """Where the replicas' logs go."""
        return self._workdir

    # ---- DeployDriver ------------------------------------------------------------------------
    def apply(self, manifest: Manifest) -> None:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        with self._lock:
            if kind == "Secret":
                self._secrets[name] = manifest
                return
            if kind in KEPT_KINDS:  # kept: no cluster to enforce them
                self._kept[(kind, name)] = manifest
                return
            if kind != "Deployment":
                raise ValueError(f"the local driver runs Deployments and Secrets, not {kind}")
            workload = self._workloads.get(name)
            if workload is None:
                workload = self._workloads[name] = _Workload(manifest)
            elif _pod_template(workload.manifest) != _pod_template(manifest):
                self._stop_all(workload)  # new environment or image: a rollout
                workload.restarts, workload.next_restart, workload.last_error = 0, 0.0, None
            workload.manifest = manifest
            self._sync(name, workload)

    def list_managed(self, selector: str | None = None) -> list[ObservedObject]:
        with self._lock:
            # a reconcile pass looks here: dead replicas are restarted as a kubelet would
            for name, workload in self._workloads.items():
                if _selected(workload.manifest["metadata"].get("labels") or {}, selector):
                    self._sync(name, workload)
            objects = [
                ObservedObject(
                    kind=manifest["kind"],
                    name=name,
                    labels=dict(manifest["metadata"].get("labels") or {}),
                    annotations=dict(manifest["metadata"].get("annotations") or {}),
                    replicas=_replicas(manifest) if manifest["kind"] == "Deployment" else None,
                )
                for name, manifest in [
                    *((n, w.manifest) for n, w in sorted(self._workloads.items())),
                    *sorted(self._secrets.items()),
                    *((n, m) for (_, n), m in sorted(self._kept.items())),
                ]
            ]
        return [o for o in objects if _selected(o.labels, selector)]

    def observe(self, kind: str, name: str) -> ObservedObject | None:
        with self._lock:
            found = [o for o in self.list_managed() if (o.kind, o.name) == (kind, name)]
        return found[0] if found else None

    def list_managed_page(
        self, kind: str, *, limit: int, token: str = ""
    ) -> tuple[list[ObservedObject], str]:
        return page_by_name(self.list_managed(), kind, limit=limit, token=token)

    def readiness(self, selector: str | None = None) -> list[Readiness]:
        result = []
        with self._lock:
            for name, workload in sorted(self._workloads.items()):
                if not _selected(workload.manifest["metadata"].get("labels") or {}, selector):
                    continue
                self._sync(name, workload)
                desired = _replicas(workload.manifest)
                ready = sum(1 for r in workload.replicas if r.process.poll() is None)
                result.append(
                    Readiness(
                        name=name,
                        desired=desired,
                        ready=ready,
                        error=None if ready >= desired else workload.last_error,
                    )
                )
        return result

    def delete(self, kind: str, name: str) -> bool:
        with self._lock:
            if kind == "Secret":
                return self._secrets.pop(name, None) is not None
            if kind in KEPT_KINDS:
                return self._kept.pop((kind, name), None) is not None
            workload = self._workloads.pop(name, None)
            if workload is None:
                return False
            self._stop_all(workload)
            return True

    def close(self) -> None:
        """Stops every replica; removes the worker folder if this driver made it."""
        with self._lock:
            for workload in self._workloads.values():
                self._stop_all(workload)
            self._workloads.clear()
            if self._owned_workdir:
                shutil.rmtree(self._workdir, ignore_errors=True)

    # ---- processes ---------------------------------------------------------------------------
    def processes(self, name: str) -> list[int]:
        """Pids of a Deployment's live replicas (for tests and `orchestrator status`)."""
        with self._lock:
            workload = self._workloads.get(name)
            if workload is None:
                return []
            return [r.process.pid for r in workload.replicas if r.process.poll() is None]

    def _sync(self, name: str, workload: _Workload) -> None:
        """Reap dead replicas, then start or stop processes until `replicas` are running."""
        for replica in [r for r in workload.replicas if r.process.poll() is not None]:
            workload.replicas.remove(replica)
            replica.log_file.close()
            workload.last_error = _exit_error(replica)
            workload.restarts += 1
            delay = min(MAX_BACKOFF_SECONDS, 2.0 ** min(workload.restarts - 1, 10))
            workload.next_restart = time.monotonic() + delay
            log.warning("worker %s exited: %s (restart in %.0fs)", name, workload.last_error, delay)
        desired = _replicas(workload.manifest)
        while len(workload.replicas) > desired:
            self._stop(workload.replicas.pop())
        if len(workload.replicas) < desired and time.monotonic() >= workload.next_restart:
            environment = self._environment(workload.manifest)
            if environment is None:
                workload.last_error = "CreateContainerConfigError: secret not found"
                return
            while len(workload.replicas) < desired:
                workload.replicas.append(self._start(name, workload, environment))

    def _environment(self, manifest: Manifest) -> dict[str, str] | None:
        env: dict[str, str] = {}
        for container in manifest["spec"]["template"]["spec"].get("containers", []):
            for source in container.get("envFrom") or []:
                secret_name = (source.get("secretRef") or {}).get("name")
                secret = self._secrets.get(secret_name or "")
                if secret is None:
                    return None
                env.update(secret_environment(secret))
        return env

    def _start(self, name: str, workload: _Workload, environment: Mapping[str, str]) -> _Replica:
        workload.started += 1
        log_path = self._workdir / f"{name}-{workload.started}.log"
        command, cwd = self._command_of(workload.manifest)
        log_file = log_path.open("wb")
        process = subprocess.Popen(
            list(command),
            env={**self._base_env, **environment, PARENT_PID_VARIABLE: str(os.getpid())},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our signals, not the terminal's
        )
        log.info("started worker %s pid=%d", name, process.pid)
        return _Replica(process, log_path, log_file)

    def _command_of(self, manifest: Manifest) -> tuple[tuple[str, ...], Path]:
        """Our worker (containers with a command); the image's own entrypoint (ferryman, in
        the image's folder) for a container without one whose image we know."""
        containers = manifest["spec"]["template"]["spec"].get("containers") or [{}]
        container = containers[0]
        folder = self._images.get(str(container.get("image") or ""))
        if container.get("command") or folder is None:
            return self._command, self._cwd
        script = self._ferryman_script or folder / FERRYMAN_SCRIPT
        return ("node", "--require", str(PARENT_GUARD), str(script)), folder

    def _stop(self, replica: _Replica) -> None:
        if replica.process.poll() is None:
            replica.process.terminate()
            try:
                replica.process.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait()
        replica.log_file.close()

    def _stop_all(self, workload: _Workload) -> None:
        while workload.replicas:
            self._stop(workload.replicas.pop())


def _selected(labels: Mapping[str, str], selector: str | None) -> bool:
    return selector_matches(MANAGED_SELECTOR, labels) and selector_matches(selector, labels)


def _replicas(manifest: Manifest) -> int:
    return int(manifest.get("spec", {}).get("replicas", 1))


def _pod_template(manifest: Manifest) -> object:
    template = manifest["spec"]["template"]
    return (
        template.get("spec"),
        (template.get("metadata") or {}).get("annotations", {}).get(SECRET_HASH_ANNOTATION),
    )


def _exit_error(replica: _Replica) -> str:
    code = replica.process.returncode
    last = ""
    with contextlib.suppress(OSError):
        lines = replica.log_path.read_bytes().decode(errors="replace").strip().splitlines()
        last = lines[-1].strip() if lines else ""
    return f"Error: exit code {code}" + (f": {last}" if last else "")
