"""`make bench`: runs what exists, says so when nothing does, never pretends to measure."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from benchmarks import __main__ as runner


def test_with_no_benchmarks_it_says_so_and_succeeds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runner, "discover", lambda: [])
    assert runner.main(["--results", str(tmp_path)]) == 0
    assert "no benchmarks yet" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def _module(monkeypatch: pytest.MonkeyPatch, name: str, run: Any) -> None:
    module = types.ModuleType(f"benchmarks.{name}")
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, f"benchmarks.{name}", module)


def test_each_benchmark_runs_and_the_summary_records_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[Path] = []

    def fast(results: Path) -> dict[str, Any]:
        seen.append(results)
        return {"ops": 3}

    _module(monkeypatch, "fast", fast)

    def broken(results: Path) -> dict[str, Any]:
        raise RuntimeError("no server")

    _module(monkeypatch, "broken", broken)
    monkeypatch.setattr(runner, "discover", lambda: ["broken", "fast"])
    assert runner.main(["--results", str(tmp_path)]) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["fast"]["ok"] and summary["fast"]["result"] == {"ops": 3}
    assert not summary["broken"]["ok"] and "no server" in summary["broken"]["error"]
    assert seen == [tmp_path]
    assert runner.main(["fast", "--results", str(tmp_path)]) == 0


def test_unknown_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "discover", lambda: ["fast"])
    with pytest.raises(SystemExit):
        runner.main(["slow"])
