"""``kuprobe doctor`` as a user without privileges: a table of what is missing and how to get
it, never a traceback (tracefs is mode 700, so even looking for it is refused)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_doctor_as_nobody_says_what_is_missing() -> None:
    argv = [sys.executable, "-m", "kuprobe", "doctor"]
    if os.geteuid() == 0:  # drop to nobody (65534), as a user would run it
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, cwd="/",
        env=dict(os.environ, COLUMNS="200", PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines() if "│" in line}
    assert "euid 65534" in rows["root"] or os.geteuid() != 0
    assert " no " in rows["root"] and "sudo" in rows["root"]
    tracefs = rows["tracefs"]
    if Path("/sys/kernel/tracing/uprobe_events").exists():  # mounted, but root's only
        assert "root only (mode 700)" in tracefs and "run with sudo" in tracefs
