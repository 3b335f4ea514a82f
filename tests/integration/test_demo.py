"""`make demo` runs bench/demo.py: two local servers, the demo schema, one daemon cycle."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.integration


def test_demo_syncs_every_demo_table_once() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "demo.py"), "--once"],
        cwd=ROOT,
        env={**os.environ, "HEALTH_PORT": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "6 table(s) synced, 0 failed" in output


def test_demo_stops_daemon_and_servers_on_ctrl_c() -> None:
    """The demo's SIGINT handler only records the signal; the main loop stops daemon and servers."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "demo.py")],
        cwd=ROOT,
        env={**os.environ, "HEALTH_PORT": "0", "INTERVAL": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "cycle 2" in line:
                break
        assert any("cycle 2" in line for line in lines), "".join(lines)[-3000:]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    output = "".join(lines) + out
    assert proc.returncode == 0, output[-3000:]
    assert "SIGINT received" in output and "daemon exited with status 0" not in output
    assert "SYNC_ENGINE - SHUTDOWN - SIGTERM received" in output and "servers stopped" in output
    assert "reentrant" not in output and "Traceback" not in output
