"""A live Session's teardown: every probe removed in one batch, counters final (marker live)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kuprobe.cli.session import Session, Watch
from kuprobe.cli.spec import parse_spec
from kuprobe.elf import ElfImage
from kuprobe.insn import boundaries
from kuprobe.live.api import backend

from .helpers import Target

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
