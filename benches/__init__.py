"""Benchmarks that print the numbers the docs quote (``./run.sh bench``); never imported by runtime
code, not in the wheel."""
