"""Benchmarks: each `benchmarks/<name>.py` with `run(results_dir) -> dict` is one (`make bench`)."""
