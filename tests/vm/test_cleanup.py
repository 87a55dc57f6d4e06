"""Nothing is left in the kernel when a kuprobe process exits, or is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from .conftest import syscall_symbol

pytestmark = pytest.mark.vm
GETPGID = syscall_symbol("getpgid")

# A kprobe (a perf event) and a kretprobe with maxactive (a tracefs event: kprobe_events).
CHILD = f"""
import os, sys, time
from kuprobe import Kprobe, Kretprobe, register_kprobe, register_kretprobe
register_kprobe(Kprobe(symbol_name="{GETPGID}", pre_handler=lambda p, r: 0))
register_kretprobe(Kretprobe(symbol_name="pipe_read", handler=lambda ri, r: 0, maxactive=4))
print("ready", flush=True)
if sys.argv[1] == "wait":
    time.sleep(600)
"""
ProbeState = Callable[[], tuple[list[str], list[str]]]


def _start(mode: str) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def _ours(lines: list[str], pid: int) -> list[str]:
    return [line for line in lines if f"kuprobe_{pid}_" in line]


def _probes_on_targets(kprobes: list[str]) -> list[str]:
    return [line for line in kprobes if GETPGID in line or "pipe_read" in line]


def _wait_clean(pid: int, state: ProbeState, seconds: float = 5) -> tuple[list[str], list[str]]:
    deadline = time.monotonic() + seconds
    while True:
        events, kprobes = state()
        left = _ours(events, pid), _probes_on_targets(kprobes)
        if not any(left) or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_nothing_left_after_exit(kernel_probe_state: ProbeState) -> None:
    child = _start("exit")
    events, kprobes = kernel_probe_state()
    assert _ours(events, child.pid), "the child's kretprobe event is not in kprobe_events"
    assert len(_probes_on_targets(kprobes)) >= 2
    assert child.wait(60) == 0
    assert _wait_clean(child.pid, kernel_probe_state) == ([], [])


def test_nothing_left_after_sigkill(kernel_probe_state: ProbeState) -> None:
    child = _start("wait")
    assert _ours(kernel_probe_state()[0], child.pid)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(60) == -signal.SIGKILL
    assert _wait_clean(child.pid, kernel_probe_state) == ([], [])
