"""Three example components run by `python -m shared.worker` (see shared/worker/main.py)."""
