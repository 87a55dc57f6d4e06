"""Nothing is left in the kernel when a kuprobe process exits, or is killed with SIGKILL.

Both processes start at once, and this one registers a kprobe of its own meanwhile: each
spends most of its start-up importing BCC and compiling its probe program, which under TCG
takes tens of seconds; side by side the three compiles use both vCPUs. The survivor's kprobe
on the same function shows the kernel removes only the dead process's probes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from kuprobe import Kprobe, register_kprobe, unregister_kprobe

from .conftest import syscall_symbol

pytestmark = pytest.mark.vm
GETPGID = syscall_symbol("getpgid")

# A kprobe (a perf event) and a kretprobe with maxactive (a tracefs event: kprobe_events).
# "exit" leaves when its stdin gives a line; "wait" sleeps until it is killed.
CHILD = f"""
import os, sys, time
from kuprobe import Kprobe, Kretprobe, register_kprobe, register_kretprobe
register_kprobe(Kprobe(symbol_name="{GETPGID}", pre_handler=lambda p, r: 0))
register_kretprobe(Kretprobe(symbol_name="pipe_read", handler=lambda ri, r: 0, maxactive=4))
print("ready", flush=True)
if sys.argv[1] == "exit":
    sys.stdin.readline()
else:
    time.sleep(600)
"""
ProbeState = Callable[[], tuple[list[str], list[str]]]


def _spawn(mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _ready(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"


def _ours(lines: list[str], pid: int) -> list[str]:
    return [line for line in lines if f"kuprobe_{pid}_" in line]


def _probes_on_targets(kprobes: list[str]) -> list[str]:
    return [line for line in kprobes if GETPGID in line or "pipe_read" in line]


def _settle(state: ProbeState, done: Callable[[list[str], list[str]], bool]) -> None:
    """Wait (5 s at most) until `done(kprobe_events, kprobes list)` holds."""
    deadline = time.monotonic() + 5
    while not done(*state()) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_nothing_left_after_exit_or_sigkill(kernel_probe_state: ProbeState) -> None:
    exiting, killed = _spawn("exit"), _spawn("wait")
    survivor = Kprobe(symbol_name=GETPGID)
    try:
        register_kprobe(survivor)  # compiles while the children do
        _ready(exiting)
        _ready(killed)
        events, kprobes = kernel_probe_state()
        assert _ours(events, exiting.pid) and _ours(events, killed.pid), events
        per_child = (len(_probes_on_targets(kprobes)) - 1) // 2
        assert per_child >= 2, kprobes  # the kprobe and the kretprobe of each

        # A normal exit: its tracefs event and its kprobes go; the other's stay.
        assert exiting.stdin is not None
        exiting.stdin.close()
        assert exiting.wait(60) == 0
        _settle(
            kernel_probe_state,
            lambda ev, kp: (
                not _ours(ev, exiting.pid) and len(_probes_on_targets(kp)) == per_child + 1
            ),
        )
        events, kprobes = kernel_probe_state()
        assert _ours(events, exiting.pid) == []
        assert len(_probes_on_targets(kprobes)) == per_child + 1, kprobes
        assert _ours(events, killed.pid)

        # SIGKILL: no code of the process runs, the kernel alone cleans up.
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(60) == -signal.SIGKILL
        _settle(
            kernel_probe_state,
            lambda ev, kp: not _ours(ev, killed.pid) and len(_probes_on_targets(kp)) == 1,
        )
        events, kprobes = kernel_probe_state()
        assert _ours(events, killed.pid) == []
        assert len(_probes_on_targets(kprobes)) == 1, kprobes  # the survivor's

        # The survivor's kprobe still fires (nothing else in the idle guest calls getpgid).
        for _ in range(3):
            os.getpgid(0)
        unregister_kprobe(survivor)
        assert survivor.hits == 3
        _settle(kernel_probe_state, lambda ev, kp: not _probes_on_targets(kp))
        assert _probes_on_targets(kernel_probe_state()[1]) == []
    finally:
        if survivor.registered:
            unregister_kprobe(survivor)
        for child in (exiting, killed):
            if child.poll() is None:
                child.kill()
                child.wait()
