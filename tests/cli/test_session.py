"""What the handlers of ``kuprobe trace/top`` record, called as the dispatcher calls them.

No kernel here: the handlers get PtRegs snapshots built by hand and ``current`` set as the
live dispatcher sets it; the probes are never registered.
"""

from __future__ import annotations

import io

import pytest

from kuprobe.commands._session import Event, Session, Watch
from kuprobe.dashboard import LATENCY_BOUNDS
from kuprobe.probes import Kprobe, Kretprobe, Uprobe
from kuprobe.regs import PtRegs
from kuprobe.spec import parse_spec
from kuprobe.task import Task, set_current
from kuprobe.trace import _Printer, summary


def regs(arch: str, ts: int, **fields: int) -> PtRegs:
    r = PtRegs.of(arch, stack=[0x1234, 7, 0xBEEF] + [0] * 13)
    for name, value in fields.items():
        setattr(r, name, value)
    r._ts = ts
    return r


def call(task: Task, handler: object, *args: object) -> None:
    set_current(task)
    try:
        handler(*args)  # type: ignore[operator]
    finally:
        set_current(None)


T1 = Task(100, 101, "demo")
T2 = Task(100, 102, "demo")


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
    assert [(e.task.tid, e.latency_ns, e.values) for e in events] == [
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


def test_session_sample_and_all_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    import kuprobe
    from kuprobe.errors import ProbeError

    done: list[str] = []

    def register(p: Uprobe) -> None:
        if p.symbol_name == "bad":
            raise ProbeError(22, "refused")
        p._owner = "fake backend"
        done.append(f"+{p.symbol_name}")

    def unregister(p: Uprobe) -> None:
        p._owner = None
        done.append(f"-{p.symbol_name}")

    monkeypatch.setattr(kuprobe, "register_uprobe", register)
    monkeypatch.setattr(kuprobe, "unregister_uprobe", unregister)
    ok = Session([Watch(parse_spec(f"u:/p:{f}")) for f in ("a", "b")])
    with ok.active():
        assert done == ["+a", "+b"]
    assert done == ["+a", "+b", "-b", "-a"]
    done.clear()
    bad = Session([Watch(parse_spec(f"u:/p:{f}")) for f in ("a", "bad", "c")])
    with pytest.raises(ProbeError):
        bad.register()
    assert done == ["+a", "-a"]
    done.clear()
    with ok.active():
        ok.watches[0].probe._owner = None  # as the backend's own SIGINT hook does
    assert done == ["+a", "+b", "-b"]  # and no EINVAL for a probe already gone
    s = ok.sample()
    assert [p.label for p in s.probes] == ["u:p:a", "u:p:b"]


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
