"""Publish a limit change on Throttler's config stream from any program, with redis-py.

A worker applies it exactly like a change made over HTTP: in stream order, audited and
announced. Run it with the Redis the service uses: ``REDIS_URL=redis://... python
publish.py`` (`make run` prints that URL when it starts; its embedded server's port is new
each time).
"""

from __future__ import annotations

import json
import os
import time
import uuid

import redis

url = os.environ.get("REDIS_URL")
if not url:
    raise SystemExit("set REDIS_URL to the Redis the service uses (`make run` prints it)")
client = redis.Redis.from_url(url, decode_responses=True)
prefix = os.environ.get("KEY_PREFIX", "throttler")
stream = "{" + prefix + "}:config"  # the braces are part of the name: "{throttler}:config"

event = {
    "type": "set_limit",  # or "delete_limit", without "limit"
    "key": "partner:acme",
    "limit": {"requests": 500, "window_ms": 60000, "algorithm": "gcra", "burst": 50},
    "actor": "billing-service",  # recorded in the audit trail
    "request_id": uuid.uuid4().hex,  # echoed in the limit-change notification
    "submitted_at_ms": time.time_ns() // 1_000_000,
}
# One field, "event", holding the JSON; trim like the service does (STREAM_MAXLEN, ~).
entry_id = client.xadd(stream, {"event": json.dumps(event)}, maxlen=1_000_000, approximate=True)
print(entry_id)  # e.g. 1767225600000-0: the change's id, and its place in the order
