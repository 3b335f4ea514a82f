"""`make demo` runs bench/demo.py: two local servers, the demo schema, one daemon cycle."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.integration


def test_demo_syncs_every_demo_table_once() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "demo.py"), "--once"], cwd=ROOT,
                          env={**os.environ, "HEALTH_PORT": "0"}, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "6 table(s) synced, 0 failed" in output
