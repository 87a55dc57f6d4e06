"""A live Session's teardown: every probe removed in one batch, counters final (marker live)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kuprobe.cli.session import Event, Session, Watch
from kuprobe.cli.spec import parse_spec
from kuprobe.elf import ElfImage
from kuprobe.insn import boundaries
from kuprobe.live.api import backend

from .helpers import EVENT_TIMEOUT, Target

pytestmark = pytest.mark.live


def test_twenty_uprobes_removed_in_one_batch_with_final_counters(live: Path) -> None:
    exe = live / "x86_64" / "target"
    with ElfImage(str(exe)) as elf:
        sym = elf.symbols["add"]
        offs = [off for off, _ in boundaries("x86_64", elf.read_vaddr(sym.value, sym.size))]
    specs = [f"u:{exe}:add+{off}" if off else f"u:{exe}:add" for off in offs]
    specs += [f"ur:{exe}:add retval", f"u:{exe}:calls"]
    t = Target(exe, "add", 500, 1)
    session = Session([Watch(parse_spec(s), pid=t.pid) for s in specs])
    try:
        session.register()
        t.go()
    finally:
        t.kill()
        session.unregister()
    assert not any(w.probe.registered for w in session.watches)
    assert not [p for p in backend().registered() if any(p is w.probe for w in session.watches)]
    hits = [w.sample().hits for w in session.watches]
    assert hits == [500] * (len(offs) + 1) + [0]  # every instruction of add, and its returns
    session.unregister()  # twice: nothing left to do


def test_unregister_with_a_timeout_counts_the_queued_events_in_dropped(live: Path) -> None:
    """``unregister(timeout=)`` (kuprobe trace at Ctrl-C, top at its end) does not wait for
    every queued event to be handled: those left when it runs out are counted in dropped."""
    exe = live / "x86_64" / "target"
    handled = []

    def slow(event: Event) -> None:  # far slower than the target records events
        handled.append(event)
        time.sleep(0.01)

    t = Target(exe, "add", 20_000, 1)
    session = Session([Watch(parse_spec(f"u:{exe}:add"), pid=t.pid, sink=slow)])
    try:
        session.register()
        t.go()  # ~200 s of handling recorded (or lost, beyond the ring's room)
    finally:
        t.kill()
        start = time.monotonic()
        session.unregister(timeout=0.2)
        took = time.monotonic() - start
    s = session.watches[0].sample()
    assert s.hits == 20_000 and s.dropped > 0, s
    assert len(handled) + s.dropped + s.lost == s.hits  # each one handled, dropped or lost
    assert took < EVENT_TIMEOUT  # not the ~200 s every queued event would have taken
    assert not session.watches[0].probe.registered
