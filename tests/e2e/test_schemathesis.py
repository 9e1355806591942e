"""schemathesis, every phase and every check, against a real `throttler serve`.

The CLI runs the examples, coverage, fuzzing and stateful phases with ``--checks all``
(server errors, status codes, content types, headers, response schemas, negative data
rejected, positive data accepted, missing headers, undeclared methods and ``Allow``,
use-after-free, resource availability, ignored authentication) against a service with both
tokens set, derandomized (a fixed seed) and bounded (``--max-examples``).

One check is narrowed, not skipped: positive_data_acceptance still fails any rejection of
schema-valid data, except a 400 naming a rule that depends on stored state or compares
fields (tests/support/schemathesis_hooks.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.service import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """\
max-stream-events = 1  # GET /notifications never ends: its first event will do

[auth.openapi.adminToken]
bearer = "admin-secret-0123456789abcdef0123456789"

[auth.openapi.checkToken]
bearer = "check-secret-0123456789abcdef0123456789"
"""


def test_every_phase_and_check_passes(redis_url: str, prefix: str, tmp_path: Path) -> None:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "WORKER_METRICS_PORT": "0",
        "WORKER_BLOCK_MS": "100",
        "ADMIN_TOKEN": "admin-secret-0123456789abcdef0123456789",
        "CHECK_TOKEN": "check-secret-0123456789abcdef0123456789",
        # Schemathesis sends wrong tokens and many changes on purpose: the per-address
        # lockout and change limit (tests/integration/test_throttle.py) would answer 429.
        "AUTH_FAILURES": "1000000",
        "MUTATIONS": "1000000",
        "LOG_LEVEL": "warning",
    }
    service = ServiceProcess(env).start(tmp_path)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    cli = Path(sys.executable).with_name("schemathesis")
    try:
        document = httpx.get(f"{service.base_url}/schema/openapi.json").json()
        operations = sum(len(item) for item in document["paths"].values())
        done = subprocess.run(
            [
                str(cli),
                "--config-file",
                str(config),
                "run",
                f"{service.base_url}/schema/openapi.json",
                "--checks",
                "all",
                # replaced by positive_data_acceptance_except_state_rules (the hooks module)
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                "25",
                "--seed",
                "1",
                "--workers",
                "1",
                "--no-color",
            ],
            cwd=tmp_path,  # its cache directory goes there, not into the repository
            env={
                **os.environ,
                "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
                "PYTHONPATH": str(ROOT),
            },
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        service.stop()
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-6000:]
    assert operations >= 14
    assert f"Tested: {operations}" in report, report[-3000:]  # every operation
