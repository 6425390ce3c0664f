"""The benchmark scripts. Each runs on its own (.venv/bin/python benchmarks/NAME.py); they import their
shared timing harness, and each other, as ``benchmarks.harness``, ``benchmarks.floor``, …"""
