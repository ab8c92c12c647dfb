"""Benchmarks for tidings. Not part of the test suite: they report, they never fail a build.

Run ``python -m bench.bench_sqlite [--quick]``; see ``docs/benchmarks.md``.
"""
