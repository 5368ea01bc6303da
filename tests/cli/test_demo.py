"""`podlink demo` runs the three-pod story with nothing but the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def test_demo_converges_and_keeps_agatha_private() -> None:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "80"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "podlink.cli", "demo"], capture_output=True,
                          text=True, timeout=60, env=env)  # fmt: skip
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all three pods agree: fulfilled" in done.stdout
    assert "Riverside: nowhere" in done.stdout and "Hilltop: nowhere" in done.stdout
    # Jonny's contact, handed over sealed, is read at Maple Street and nowhere between.
    assert "Maple Street's inbox" in done.stdout and "Jonny, 555 0199" in done.stdout
    assert "nowhere at Riverside" in done.stdout
    assert done.stderr == ""
    assert max(map(len, done.stdout.splitlines())) <= 80
    assert took < 30
