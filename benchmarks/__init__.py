"""Throughput benchmarks: `python -m benchmarks.throughput` (see benchmarks/throughput.py)."""
