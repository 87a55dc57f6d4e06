"""What the handlers of ``kuprobe trace/top`` record, and a Session on a backend.

The handler tests call them as the live dispatcher does (PtRegs snapshots and ``current``
set by hand, the probes unregistered); the Session test registers on a real model Machine.
"""

from __future__ import annotations

import io
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest

from kuprobe import context
from kuprobe.cli.latency import LATENCY_BOUNDS
from kuprobe.cli.session import Event, Session, Watch
from kuprobe.cli.spec import parse_spec
from kuprobe.cli.trace import _Printer, summary
from kuprobe.probes import Kprobe, Kretprobe, Uprobe
from kuprobe.regs import PtRegs
from kuprobe.task import Task


def regs(arch: str, ts: int, **fields: int) -> PtRegs:
    r = PtRegs.of(arch, stack=[0x1234, 7, 0xBEEF] + [0] * 13, ts=ts)
    for name, value in fields.items():
        setattr(r, name, value)
    return r


def call(task: Task, handler: object, *args: object) -> None:
    previous = context.enter_task(task)
    try:
        handler(*args)  # type: ignore[operator]
    finally:
        context.leave_task(previous)


T1 = Task(101, 100, "demo")
T2 = Task(102, 100, "demo")


def test_probe_objects_from_specs() -> None:
    up = Watch(parse_spec("u:/bin/prog:f+4")).probe
    assert isinstance(up, Uprobe)
    assert (up.path, up.symbol_name, up.offset) == ("/bin/prog", "f", 4)
    assert up.consumer is not None and up.consumer.ret_handler is None
    raw = Watch(parse_spec("u:/bin/prog:0x1040"), pid=7).probe
    assert (raw.symbol_name, raw.offset, raw.pid) == (None, 0x1040, 7)
    ret = Watch(parse_spec("ur:/bin/prog:f")).probe
    assert ret.consumer.handler is not None and ret.consumer.ret_handler is not None
    assert isinstance(Watch(parse_spec("k:vfs_read+4")).probe, Kprobe)
    kr = Watch(parse_spec("kr:vfs_read")).probe
    assert isinstance(kr, Kretprobe) and kr.entry_handler is not None


def test_return_latency_per_thread_and_nested() -> None:
    events: list[Event] = []
    w = Watch(parse_spec("ur:/bin/prog:rec retval"), sink=events.append)
    uc = w.probe.consumer
    call(T1, uc.handler, uc, regs("x86_64", 1_000))
    call(T2, uc.handler, uc, regs("x86_64", 1_500))
    call(T1, uc.handler, uc, regs("x86_64", 2_000))  # nested in T1
    call(T1, uc.ret_handler, uc, 0, regs("x86_64", 2_300, ax=1))  # inner: 300ns
    call(T2, uc.ret_handler, uc, 0, regs("x86_64", 9_500, ax=5))  # 8µs
    call(T1, uc.ret_handler, uc, 0, regs("x86_64", 4_000, ax=2))  # outer: 3µs
    assert [(e.task.pid, e.latency_ns, e.values) for e in events] == [
        (101, 300, ("retval=1",)),
        (102, 8_000, ("retval=5",)),
        (101, 3_000, ("retval=2",)),
    ]
    assert all(e.returned for e in events)
    bounds = [0, *LATENCY_BOUNDS]
    counted = {bounds[b]: n for b, n in enumerate(w.hist) if n}
    assert counted == {200: 1, 5_000: 1, 2_000: 1}
    assert w.tasks == {(100, "demo"): 3}


def test_entry_values_follow_the_user_abi() -> None:
    events: list[Event] = []
    w64 = Watch(parse_spec("u:/p:f arg0 arg1:x arg7"), sink=events.append)
    w32 = Watch(parse_spec("u:/p32:f arg0 arg1:x"), sink=events.append)
    call(T1, w64.probe.consumer.handler, None, regs("x86_64", 1, di=2**64 - 3, si=0x10))
    call(T1, w32.probe.consumer.handler, None, regs("i386", 1, ax=9, dx=9))
    # x86_64: di, si, …, then the stack above the return address; i386 cdecl: all stack
    assert [e.values for e in events] == [
        ("arg0=-3", "arg1=0x10", "arg7=48879"),
        ("arg0=7", "arg1=0xbeef"),
    ]


def test_pid_filter_for_kprobes() -> None:
    w = Watch(parse_spec("k:vfs_read"), pid=100)
    call(T1, w.probe.pre_handler, w.probe, regs("x86_64", 1))
    call(Task(200, 200, "other"), w.probe.pre_handler, w.probe, regs("x86_64", 1))
    assert w.tasks == {(100, "demo"): 1}


def test_session_on_a_model_backend_all_or_none(targets: Path) -> None:
    """A Session registers on any backend: here a real model Machine (no root, no fake)."""
    from kuprobe.errors import ProbeError
    from kuprobe.model import Machine

    exe = targets / "x86_64" / "target-static"
    m = Machine.load(str(exe))
    ok = Session([Watch(parse_spec(f"u:{exe}:{f} arg0")) for f in ("add", "sw")], backend=m)
    with ok.active():
        assert all(w.probe.registered for w in ok.watches)
        assert m.call("add", 3, 4) == 7
        assert m.call("add", 5, 6) == 11
    assert not any(w.probe.registered for w in ok.watches)
    s = ok.sample()
    assert [(p.label, p.hits) for p in s.probes] == [
        ("u:target-static:add", 2),
        ("u:target-static:sw", 0),
    ]
    assert s.tasks == {(m.task.tgid, m.task.comm): 2}

    bad = Session(
        [Watch(parse_spec(f"u:{exe}:{f}")) for f in ("add", "no_such_function", "sw")], backend=m
    )
    with pytest.raises(ProbeError):
        bad.register()
    assert not any(w.probe.registered for w in bad.watches)  # all or none
    assert m.call("add", 1, 1) == 2
    assert bad.watches[0].probe.hits == 0  # the first one was really taken back

    with ok.active():
        m.unregister_uprobe(ok.watches[0].probe)  # as the live backend's own SIGINT hook does
    assert not any(w.probe.registered for w in ok.watches)  # and no EINVAL for the one gone


def test_trace_lines_and_summary() -> None:
    out = io.StringIO()
    printer = _Printer(out, start_ns=1_000_000_000)
    w = Watch(parse_spec("ur:/usr/bin/demo:demo_hash retval:x"), sink=printer)
    uc = w.probe.consumer
    call(T1, uc.handler, uc, regs("x86_64", 1_250_000_000))
    call(T1, uc.ret_handler, uc, 0, regs("x86_64", 1_250_012_500, ax=0xABC))
    printer.header()
    printer.flush()
    assert out.getvalue() == (
        "   TIME(s) PID/TID         COMM             PROBE\n"
        "  0.250013 100/101         demo             ur:demo:demo_hash retval=0xabc (12µs)\n"
    )
    assert summary(Session([w]), dropped=2) == (
        "PROBE                 HITS  NMISSED     LOST   ERRORS\n"
        "ur:demo:demo_hash        0        0        0        0\n"
        "2 events were not printed: the output could not keep up\n"
    )


class _Flooded(io.StringIO):
    """An output whose every write brings another event, as a flood does while trace prints."""

    def __init__(self, flood: Callable[[], None], more: int) -> None:
        super().__init__()
        self.flood, self.more = flood, more

    def write(self, s: str) -> int:
        if self.more:
            self.more -= 1
            self.flood()
        return super().write(s)


def test_trace_flush_writes_what_was_pending_and_stops_on_request() -> None:
    printer = _Printer(io.StringIO(), start_ns=0)
    w = Watch(parse_spec("u:/usr/bin/demo:demo_handle arg0"), sink=printer)
    uc = w.probe.consumer

    def hit() -> None:
        call(T1, uc.handler, uc, regs("x86_64", 1_000))

    printer.out = out = _Flooded(hit, more=1000)
    hit()
    hit()
    done = printer.flush()  # the two pending at the call, not the ones they brought
    assert len(out.getvalue().splitlines()) == 2 and len(printer.pending) == 2
    assert done is True

    stop = threading.Event()
    stop.set()
    assert printer.flush(stop=stop) is False and len(printer.pending) == 2
    assert printer.flush(until=time.monotonic()) is False
    printer.abandon()
    assert (printer.pending, printer.abandoned, printer.unprinted) == (deque(), 2, 2)
    assert summary(Session([w]), abandoned=2).endswith(
        "2 events were not printed: still pending 0.5 s after Ctrl-C\n"
    )
