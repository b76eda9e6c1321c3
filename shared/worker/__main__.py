"""`python -m shared.worker`: the step worker inside a flow's container (see main.py)."""

import sys

from shared.worker.main import main

sys.exit(main())
