"""``python -m bench``: the performance benchmark of Throttler (see docs/performance.md).

It starts its own Redis and API processes on loopback, drives load from a separate process
(wrk when installed, else :mod:`bench.loadgen`), and stops everything it started by pid.
"""
