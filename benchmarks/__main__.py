"""`make bench`: runs every benchmarks/<name>.py that defines `run(results_dir) -> dict`.

Each writes its own files into benchmarks/results/; this runner adds summary.json (what ran,
how long, what it returned). With no benchmark modules it says so and exits 0: nothing is
measured, nothing is pretended. `python -m benchmarks NAME...` runs only those.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import benchmarks

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def discover() -> list[str]:
    """Names of the modules in this package that define a callable `run`."""
    names = []
    for info in pkgutil.iter_modules(benchmarks.__path__):
        if info.name.startswith("_") or info.ispkg:
            continue
        module = importlib.import_module(f"benchmarks.{info.name}")
        if callable(getattr(module, "run", None)):
            names.append(info.name)
    return sorted(names)


def run_all(names: Sequence[str], results_dir: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    results_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        print(f"benchmark {name} ...", flush=True)
        started = time.perf_counter()
        try:
            result = importlib.import_module(f"benchmarks.{name}").run(results_dir)
            entry: dict[str, Any] = {"ok": True, "result": result}
        except Exception:
            traceback.print_exc()
            entry = {"ok": False, "error": traceback.format_exc(limit=3)}
        entry["seconds"] = round(time.perf_counter() - started, 2)
        summary[name] = entry
        print(f"benchmark {name}: {'done' if entry['ok'] else 'FAILED'} in {entry['seconds']}s")
    (results_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("names", nargs="*", help="only these benchmarks (default: all)")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="where results are written")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    available = discover()
    if args.list:
        print("\n".join(available) or "no benchmarks yet")
        return 0
    unknown = sorted(set(args.names) - set(available))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {available}")
    names = args.names or available
    if not names:
        print("no benchmarks yet: benchmarks/<name>.py with run(results_dir) -> dict adds one")
        return 0
    summary = run_all(names, Path(args.results))
    failed = [name for name, entry in summary.items() if not entry["ok"]]
    print(f"results in {args.results}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
