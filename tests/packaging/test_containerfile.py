"""The Containerfile, checked by structure (no docker here) and by running its CMD for real.

Structure: slim Python base, dependencies from pyproject (`pip install .`), a numeric non-root
USER that the final stage ends with, no secrets in ENV/ARG or in the build context, the four
function adapters copied. Behaviour: the CMD, run through `sh` as the image would, serves
/metrics for a function, and refuses to start without FUNCTION_SOURCE.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from shared.events.types import FUNCTIONS
from shared.local.embedded_redis import free_port

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "Containerfile"
IGNORE_FILE = ROOT / ".dockerignore"
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE", re.I)
SECRET_FILES = ("*.pem", "*.key", "*.p12", ".env", "*.env", "id_rsa*", "*.jwk", "*.kubeconfig")


@dataclass(frozen=True)
class Instruction:
    command: str
    arguments: str


def parse(text: str) -> list[list[Instruction]]:
    """Stages of instructions; line continuations joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[list[Instruction]] = []
    for line in logical:
        command, _, arguments = line.partition(" ")
        instruction = Instruction(command.upper(), arguments.strip())
        if instruction.command == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


def env_pairs(arguments: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(arguments) if "=" in item)


STAGES = parse(CONTAINERFILE.read_text())
FINAL = STAGES[-1]


def of(stage: list[Instruction], command: str) -> list[Instruction]:
    return [i for i in stage if i.command == command]


def final_env() -> dict[str, str]:
    merged: dict[str, str] = {}
    for instruction in of(FINAL, "ENV"):
        merged.update(env_pairs(instruction.arguments))
    return merged


def cmd_argv() -> list[str]:
    (cmd,) = of(FINAL, "CMD")
    argv = json.loads(cmd.arguments)
    assert isinstance(argv, list)
    return [str(a) for a in argv]


@pytest.mark.parametrize("index", range(len(STAGES)), ids=lambda i: f"stage {i}")
def test_every_stage_starts_from_python_3_11_slim(index: int) -> None:
    image = of(STAGES[index], "FROM")[0].arguments.split()[0]
    assert image == "python:3.11-slim"


def test_dependencies_come_from_pyproject() -> None:
    runs = [i.arguments for stage in STAGES for i in of(stage, "RUN")]
    assert any(re.search(r"pip install (\S+ )*\.$", run) for run in runs), runs
    copied = " ".join(i.arguments for i in of(STAGES[0], "COPY"))
    assert "pyproject.toml" in copied


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    users = of(FINAL, "USER")
    assert users, "the final stage must set USER"
    uid = users[-1].arguments.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]
    # Nothing after the last USER may switch back or run as another user.
    last_user = max(i for i, instruction in enumerate(FINAL) if instruction.command == "USER")
    assert not [i for i in FINAL[last_user + 1 :] if i.command == "RUN"]


def test_the_function_target_is_handle_and_the_cmd_uses_source_and_port() -> None:
    assert final_env()["FUNCTION_TARGET"] == "handle"
    script = cmd_argv()[-1]
    assert script.startswith("exec functions-framework ")
    for needed in ("--target", "$FUNCTION_TARGET", "--source", "FUNCTION_SOURCE", "$PORT"):
        assert needed in script


def baked_names(stages: list[list[Instruction]]) -> list[str]:
    """The names every ENV and ARG instruction of every stage sets."""
    names: list[str] = []
    for stage in stages:
        for instruction in of(stage, "ENV"):
            names.extend(env_pairs(instruction.arguments))
        for instruction in of(stage, "ARG"):
            names.append(instruction.arguments.split("=")[0].strip())
    return names


def test_no_secret_is_baked_into_the_image() -> None:
    names = baked_names(STAGES)
    assert {"PATH", "UID"} <= set(names)  # the parser saw the ENV and ARG lines
    assert [n for n in names if SECRET_NAME.search(n)] == []


@pytest.mark.parametrize(
    "line", ["ENV ORCHESTRATOR_KEY=x", "ENV A=1 IAM_SERVICE_TOKEN=y", "ARG DB_PASSWORD"]
)
def test_a_baked_secret_would_be_found(line: str) -> None:
    names = baked_names([parse(f"FROM scratch\n{line}\n")[0]])
    assert [n for n in names if SECRET_NAME.search(n)]


def _context_patterns() -> list[str]:
    return [
        line.strip()
        for line in IGNORE_FILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def _matches(pattern: str, relative: str) -> bool:
    """Docker's rule, simplified: a pattern matches a path or any directory above it;
    `**/name` matches at any depth."""
    parts = relative.split("/")
    body = pattern.rstrip("/")
    if body.startswith("**/"):
        return any(fnmatch.fnmatch(part, body[3:]) for part in parts)
    return any(fnmatch.fnmatch("/".join(parts[: n + 1]), body) for n in range(len(parts)))


def _in_context(relative: str) -> bool:
    """Whether the ignore file lets `relative` into the build context (last match wins)."""
    included = True
    for pattern in _context_patterns():
        negate = pattern.startswith("!")
        if _matches(pattern.removeprefix("!"), relative):
            included = negate
    return included


def test_the_build_context_holds_no_local_state_or_key_files() -> None:
    assert _context_patterns()[0] == "*", "the context must start from nothing"
    for relative in (".run/keys/orchestrator.key", ".venv/bin/python", ".git/config", ".env"):
        assert not _in_context(relative), relative
    offenders = [
        str(path.relative_to(ROOT))
        for path in ROOT.rglob("*")
        if path.is_file()
        and ".venv" not in path.parts
        and ".git" not in path.parts
        and _in_context(str(path.relative_to(ROOT)))
        and any(fnmatch.fnmatch(path.name, pattern) for pattern in SECRET_FILES)
    ]
    assert offenders == []


def test_every_copy_source_is_in_the_context_and_never_the_whole_tree() -> None:
    for stage in STAGES:
        for instruction in of(stage, "COPY"):
            words = [w for w in instruction.arguments.split() if not w.startswith("--")]
            if "--from" in instruction.arguments:
                continue
            for source in words[:-1]:
                assert source not in (".", "./", "*"), instruction
                assert _in_context(source.rstrip("/")), source


@pytest.mark.parametrize("function", [*FUNCTIONS, "dead-letters"])
def test_each_function_adapter_is_in_the_image(function: str) -> None:
    source = Path("functions") / function.replace("-", "_") / "main.py"
    assert (ROOT / source).is_file()
    copied = [i.arguments.split() for i in of(FINAL, "COPY") if "--from" not in i.arguments]
    assert any(words[0].rstrip("/") == "functions" for words in copied)


def _run_cmd(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The image's CMD, as its shell would run it, in a working dir shaped like /app."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.Popen(
        cmd_argv(),
        cwd=ROOT,
        env={**final_env(), "PATH": path, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.parametrize(
    ("source", "settings", "series"),
    [
        pytest.param(
            "functions/flow_start/main.py",
            {"REDIS_URL": "redis://127.0.0.1:1/0", "ORCHESTRATOR_KEY": "k" * 48,
             "ORCHESTRATOR_AUTH": "off"},
            b"orchestrator_events_handled",
            id="a function",
        ),
        pytest.param(  # the fifth target: REDIS_URL alone (no key, no IAM)
            "functions/dead_letters/main.py",
            {"REDIS_URL": "redis://127.0.0.1:1/0"},
            b"orchestrator_dead_letters",
            id="the dead-letter sink",
        ),
    ],
)  # fmt: skip
def test_the_cmd_serves_a_function_and_its_metrics(
    source: str, settings: dict[str, str], series: bytes
) -> None:
    """What the Deployment or Knative Service gives it; nothing is contacted to serve probes."""
    port = free_port()
    process = _run_cmd({"PORT": str(port), "FUNCTION_SOURCE": source, **settings})
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail("functions-framework did not start")
                time.sleep(0.1)
        assert response.status_code == 200
        assert series in response.content
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_cmd_refuses_to_start_without_function_source() -> None:
    process = _run_cmd({"PORT": str(free_port())})
    output, _ = process.communicate(timeout=30)
    assert process.returncode != 0
    assert b"FUNCTION_SOURCE" in output
