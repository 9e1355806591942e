"""``python -m bench`` (``make bench``): the performance benchmark of Throttler.

It starts its own Redis and API processes on loopback, drives them with wrk from a separate
process, stops everything it started by pid, prints one table and writes one JSON file
(docs/performance.md reports a run).
"""
