"""``kuprobe trace`` under faults: its reader goes away (``| head``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.live
KUPROBE = Path(sys.executable).with_name("kuprobe")


def test_trace_into_head_ends_with_a_summary_not_a_traceback(live: Path) -> None:
    exe = (live / "x86_64" / "demo").resolve()
    demo = subprocess.Popen([str(exe), "60"], stdout=subprocess.DEVNULL)
    try:
        trace = subprocess.Popen(
            [str(KUPROBE), "trace", f"u:{exe}:demo_handle arg0", "--pid", str(demo.pid)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert trace.stdout is not None
        for _ in range(3):  # what `head -3` reads; then it exits
            assert trace.stdout.readline()
        trace.stdout.close()
        _, err = trace.communicate(timeout=30)
    finally:
        demo.kill()
        demo.wait()
    text = err.decode()
    assert "Traceback" not in text and "BrokenPipeError" not in text, text
    assert "PROBE" in text and "u:demo:demo_handle" in text.split("PROBE", 1)[1]
    assert trace.returncode == 0
