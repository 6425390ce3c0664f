"""The benchmark scripts, modules of this package run from the repository root: ``.venv/bin/python -m benchmarks``
(the performance table, __main__.py) or ``.venv/bin/python -m benchmarks.NAME``. They import their shared timing
harness, and each other, as ``benchmarks.harness``, ``benchmarks.floor``, …"""
