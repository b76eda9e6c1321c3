"""A stand-in step worker for local-driver tests: records its environment, then waits.

Run as `python -m tests.fakes.step_worker`. It writes its environment as JSON to
`$WORKER_RECORD_DIR/<pid>.json`; if STEP_FIELDS holds {"crash": "..."} it prints that text
and exits with code 3 instead (a crashing component).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def main() -> None:
    fields = json.loads(os.environ.get("STEP_FIELDS") or "{}")
    if fields.get("crash"):
        print(fields["crash"], flush=True)
        sys.exit(3)
    record_dir = os.environ.get("WORKER_RECORD_DIR")
    if record_dir:
        with open(os.path.join(record_dir, f"{os.getpid()}.json"), "w") as out:
            json.dump(dict(os.environ), out)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
