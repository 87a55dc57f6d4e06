"""unregister_uprobe() one at a time, fast (the slot stopped in the BPF map, the link closed in
the background: kuprobe/live/closer.py), keeps the kernel's promise: every event recorded
before it is handled, no handler runs after it, the counters are final; and nothing is left
in the kernel when the process dies right after, even by SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kuprobe import Uprobe, UprobeConsumer, register_uprobe, unregister_uprobe
from kuprobe.live.api import backend
from kuprobe.live.tracefs import tracefs
from kuprobe.regs import PtRegs

from .helpers import Target, bpf_fds, run, wait_until

pytestmark = pytest.mark.live
N = 12


def test_one_by_one_unregister_under_load_keeps_the_promise(live: Path) -> None:
    exe = live / "x86_64" / "target"
    load = Target(exe, "add", 10**11, 1)  # calls add until killed
    calls: list[list[int]] = [[] for _ in range(N)]

    def recorder(k: int) -> UprobeConsumer:
        def handler(uc: UprobeConsumer, regs: PtRegs) -> int:
            calls[k].append(1)
            return 0

        return UprobeConsumer(handler=handler)

    probes = [Uprobe(str(exe), symbol_name="add", consumer=recorder(k)) for k in range(N)]
    try:
        for p in probes:
            register_uprobe(p)
        assert load.proc.stdin is not None
        load.proc.stdin.write("go\n")
        load.proc.stdin.flush()

        def every_probe_fired() -> bool:  # 100 times each; the load goes on
            for p in probes:
                backend().sync_counters(p)
            return min(p.hits for p in probes) >= 100

        wait_until(every_probe_fired, "each probe hit 100 times")
        at_return = []
        for k, p in enumerate(probes):
            unregister_uprobe(p)
            at_return.append((p.hits, p.lost, p.dropped, p.handler_errors, len(calls[k])))
        # the load still calls add: let the kernel record more, and the dispatcher run
        run(exe, "add", 1000, 1)
        backend().closer.flush()
    finally:
        load.kill()
    for k, (p, (hits, lost, dropped, errors, handled)) in enumerate(
        zip(probes, at_return, strict=True)
    ):
        assert not p.registered
        assert (p.hits, p.lost, p.dropped, p.handler_errors) == (hits, lost, dropped, errors)
        assert len(calls[k]) == handled, "a handler ran after unregister returned"
        assert hits >= 100
        assert hits == handled + errors + lost + dropped, (hits, handled, errors, lost, dropped)
    assert bpf_fds() == {}  # the links closed in the background, once flushed


def test_unregistered_slot_is_reused_only_after_its_link_closed(live: Path) -> None:
    """A new probe never counts the hits of an old link still closing on its slot."""
    exe = live / "x86_64" / "target"
    old = Uprobe(str(exe), symbol_name="add", consumer=UprobeConsumer(handler=lambda uc, r: 0))
    new = Uprobe(str(exe), symbol_name="loop_sum")
    register_uprobe(old)
    unregister_uprobe(old)
    register_uprobe(new)
    try:
        run(exe, "add", 300, 1)
        run(exe, "loop_sum", 7, 3)
    finally:
        unregister_uprobe(new)
    assert old.hits == 0
    assert new.hits == 7


SCRIPT_KILLED = textwrap.dedent(
    """
    import sys
    from kuprobe import Uprobe, UprobeConsumer, register_uprobe, unregister_uprobe
    exe = sys.argv[1]
    probes = [Uprobe(exe, symbol_name=s, consumer=UprobeConsumer(handler=lambda uc, r: 0))
              for s in ("add", "loop_sum", "fib", "rec") * 5]
    for p in probes:
        register_uprobe(p)
    print("armed", flush=True)
    sys.stdin.readline()
    for p in probes:
        unregister_uprobe(p)
    from kuprobe.live.api import backend
    print("unregistered", backend().closer.pending(), flush=True)
    sys.stdin.readline()
    """
)


def test_sigkill_right_after_fast_unregister_leaves_nothing(live: Path) -> None:
    exe = live / "x86_64" / "target"
    t = Target(exe, "add", 3)
    add = t.runtime_address("add")
    original = t.read_mem(add, 1)
    p = subprocess.Popen(
        [sys.executable, "-c", SCRIPT_KILLED, str(exe)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdin is not None and p.stdout is not None
        assert p.stdout.readline().strip() == "armed"
        assert t.read_mem(add, 1) != original  # armed: the kernel's breakpoint is in
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().split()[0] == "unregistered"
        p.send_signal(signal.SIGKILL)  # links possibly still closing in the background
        p.wait(timeout=30)
        assert t.read_mem(add, 1) == original
        assert t.go() == run(exe, "add", 3)
    finally:
        t.kill()
        if p.poll() is None:
            p.kill()
    root = tracefs()
    if root is not None and (root / "uprobe_events").exists():
        assert "kuprobe" not in (root / "uprobe_events").read_text()
