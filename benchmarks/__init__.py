"""Throughput suite of pdiff_fast (pytest-benchmark); see benchmarks/README.md."""
