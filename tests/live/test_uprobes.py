"""Live uprobes and uretprobes on real processes: what the kernel delivered, exactly."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from kuprobe import (
    Uprobe,
    UprobeConsumer,
    current,
    register_uprobe,
    regs_get_kernel_stack_nth,
    regs_return_value,
    unregister_uprobe,
)
from kuprobe.live.uprobe import NO_FUNC_IP_ENV
from kuprobe.probes import UPROBE_HANDLER_REMOVE, UprobeHandler
from kuprobe.regs import PtRegs, signed
from kuprobe.task import Task

from .helpers import EVENT_TIMEOUT, Target, file_offset_of, run, symbol_value

pytestmark = pytest.mark.live
ARCHES = ["x86_64", "i386"]


def args_of(regs: PtRegs) -> tuple[int, int]:
    """add(a, b)'s arguments per the user-space ABI of the trapped task."""
    if regs.arch == "x86_64":
        return regs.di, regs.si
    return regs_get_kernel_stack_nth(regs, 1), regs_get_kernel_stack_nth(regs, 2)  # cdecl


@pytest.mark.parametrize("arch", ARCHES)
def test_entry_counts_arguments_and_current(live: Path, arch: str) -> None:
    exe = live / arch / "target"
    seen: list[tuple[int, int]] = []
    tasks: list[Task] = []

    def handler(uc: UprobeConsumer, regs: PtRegs) -> int:
        assert regs.arch == arch
        seen.append(args_of(regs))
        tasks.append(current())
        return 0

    t = Target(exe, "add", 50, 7)
    up = Uprobe(str(exe), symbol_name="add", consumer=UprobeConsumer(handler=handler))
    register_uprobe(up)
    try:
        out = t.go()
    finally:
        unregister_uprobe(up)
    assert out == run(exe, "add", 50, 7)  # probing changed nothing the program computes
    assert up.hits == 50 and up.lost == 0 and up.handler_errors == 0
    assert seen == [(7 + i, 2 * (7 + i)) for i in range(50)]
    assert {(x.pid, x.tgid, x.comm) for x in tasks} == {(t.pid, t.pid, "target")}


@pytest.mark.parametrize("arch", ARCHES)
def test_uretprobe_return_values_in_order(live: Path, arch: str) -> None:
    exe = live / arch / "target"
    rets: list[int] = []
    funcs: set[int] = set()

    def ret_handler(uc: UprobeConsumer, func: int, regs: PtRegs) -> int:
        rets.append(signed(regs_return_value(regs), 64 if arch == "x86_64" else 32))
        funcs.add(func)
        return 0

    t = Target(exe, "sw", 12, -2)
    sw_address = t.runtime_address("sw")
    up = Uprobe(str(exe), symbol_name="sw", consumer=UprobeConsumer(ret_handler=ret_handler))
    register_uprobe(up)
    try:
        t.go()
    finally:
        unregister_uprobe(up)
    table = [11, 23, 37, 41, 53, 67, 79, 83]
    assert rets == [table[k] if 0 <= k < 8 else -1 for k in range(-2, 10)]
    assert up.hits == 12 and up.ret_hits == 12
    # func is the probed function's runtime address (bp_vaddr), the same on every return
    assert funcs == {sw_address}


@pytest.mark.parametrize("pid_filter", [False, True], ids=["all", "pid"])
@pytest.mark.parametrize("arch", ARCHES)
def test_uretprobe_func_of_a_process_gone_before_dispatch(
    live: Path, arch: str, pid_filter: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """func where bpf_get_func_ip() gives 0 for uprobes (kernels before 6.6; forced here),
    for a process that exited and was reaped before any of its return events was handled:
    its mappings are gone, and func is still the function's address (the entry slot's note)."""
    monkeypatch.setenv(NO_FUNC_IP_ENV, "1")
    exe = live / arch / "target"
    reaped = threading.Event()
    funcs: list[int] = []

    def handler(uc: UprobeConsumer, regs: PtRegs) -> int:
        # The dispatcher waits here at the first call's entry event, which the ring holds
        # before every return event of the process.
        reaped.wait(EVENT_TIMEOUT)
        return 0

    def ret_handler(uc: UprobeConsumer, func: int, regs: PtRegs) -> int:
        funcs.append(func)
        return 0

    t = Target(exe, "sw", 12, -2)
    sw_address = t.runtime_address("sw")  # the ELF symbol and where the process mapped it
    up = Uprobe(
        str(exe),
        symbol_name="sw",
        pid=t.pid if pid_filter else None,
        consumer=UprobeConsumer(handler=handler, ret_handler=ret_handler),
    )
    register_uprobe(up)
    try:
        t.go()  # it ran, exited and was reaped
        assert not os.path.exists(f"/proc/{t.pid}")
    finally:
        t.kill()
        reaped.set()
        unregister_uprobe(up)
    assert up.hits == 12 and up.ret_hits == 12 and up.handler_errors == 0
    assert funcs == [sw_address] * 12


@pytest.mark.parametrize("arch", ARCHES)
def test_mid_function_register(live: Path, arch: str) -> None:
    """At mid_label, midpoint(x) holds x * 3 + 7 in the accumulator (tests/targets/funcs.c)."""
    exe = live / arch / "target"
    mid = symbol_value(exe, "mid_label") - symbol_value(exe, "midpoint")
    assert mid > 0
    seen: list[int] = []
    up = Uprobe(
        str(exe),
        symbol_name="midpoint",
        offset=mid,
        consumer=UprobeConsumer(handler=lambda uc, regs: seen.append(regs.ax) or 0),
    )
    t = Target(exe, "midpoint", 10, 100)
    register_uprobe(up)
    try:
        t.go()
    finally:
        unregister_uprobe(up)
    assert up.file_offset == file_offset_of(exe, "mid_label")
    assert seen == [(100 + i) * 3 + 7 for i in range(10)]


def test_several_consumers_on_one_offset(live: Path) -> None:
    exe = live / "x86_64" / "target"
    calls: dict[str, list[int]] = {"a": [], "b": [], "c": []}

    def recorder(k: str) -> UprobeHandler:
        return lambda uc, regs: calls[k].append(regs.di) or 0

    probes = [
        Uprobe(str(exe), symbol_name="add", consumer=UprobeConsumer(handler=recorder(k)))
        for k in calls
    ]
    # the same (inode, offset) given as a file offset: one kernel uprobe, three consumers
    probes[2] = Uprobe(str(exe), offset=file_offset_of(exe, "add"), consumer=probes[2].consumer)
    t = Target(exe, "add", 20, 1)
    for p in probes:
        register_uprobe(p)
    try:
        t.go()
    finally:
        for p in probes:
            unregister_uprobe(p)
    assert len({(p.inode, p.file_offset) for p in probes}) == 1
    for k in calls:
        assert calls[k] == list(range(1, 21)), k
    assert [p.hits for p in probes] == [20, 20, 20]


def test_pid_filter_two_processes(live: Path) -> None:
    exe = live / "x86_64" / "target"
    pids: list[int] = []
    a, b = Target(exe, "add", 30), Target(exe, "add", 40)
    up = Uprobe(
        str(exe),
        symbol_name="add",
        pid=b.pid,
        consumer=UprobeConsumer(handler=lambda uc, regs: pids.append(current().tgid) or 0),
    )
    register_uprobe(up)
    try:
        a.go()
        b.go()
    finally:
        unregister_uprobe(up)
    assert up.hits == 40
    assert pids == [b.pid] * 40


def test_consumer_filter_and_handler_remove(live: Path) -> None:
    """filter(uc, task) before the handler; UPROBE_HANDLER_REMOVE stops calls per process."""
    exe = live / "x86_64" / "target"
    a, b, c = Target(exe, "add", 10), Target(exe, "add", 10), Target(exe, "add", 10)
    filtered: list[int] = []
    called: list[int] = []

    def filt(uc: UprobeConsumer, task: Task) -> bool:
        filtered.append(task.tgid)
        return task.tgid != a.pid

    def handler(uc: UprobeConsumer, regs: PtRegs) -> int:
        called.append(current().tgid)
        return UPROBE_HANDLER_REMOVE

    up = Uprobe(str(exe), symbol_name="add", consumer=UprobeConsumer(handler=handler, filter=filt))
    register_uprobe(up)
    try:
        for t in (a, b, c):
            t.go()
    finally:
        unregister_uprobe(up)
    assert called == [b.pid, c.pid]  # a filtered out; b and c removed after their first call
    assert filtered.count(a.pid) == 10


def test_handler_errors_are_counted_and_dispatch_goes_on(live: Path) -> None:
    exe = live / "x86_64" / "target"
    good: list[int] = []

    def bad(uc: UprobeConsumer, regs: PtRegs) -> int:
        raise RuntimeError("handler bug")

    t = Target(exe, "add", 25)
    up_bad = Uprobe(str(exe), symbol_name="add", consumer=UprobeConsumer(handler=bad))
    up_good = Uprobe(
        str(exe),
        symbol_name="add",
        consumer=UprobeConsumer(handler=lambda uc, regs: good.append(1) or 0),
    )
    register_uprobe(up_bad)
    register_uprobe(up_good)
    try:
        t.go()
    finally:
        unregister_uprobe(up_bad)
        unregister_uprobe(up_good)
    assert up_bad.handler_errors == 25 and up_bad.hits == 25
    assert len(good) == 25 and up_good.handler_errors == 0


def test_unregister_drains_every_recorded_event(live: Path) -> None:
    exe = live / "x86_64" / "target"
    n = 20000
    got = [0]

    def handler(uc: UprobeConsumer, regs: PtRegs) -> int:
        got[0] += 1
        return 0

    up = Uprobe(str(exe), symbol_name="add", consumer=UprobeConsumer(handler=handler))
    t = Target(exe, "add", n)
    register_uprobe(up)
    t.go()  # the process has exited: every event is recorded, most not yet handled
    unregister_uprobe(up)
    assert got[0] == n == up.hits and up.lost == 0
    after = got[0]
    run(exe, "add", 100)
    assert got[0] == after and up.hits == n  # nothing runs after unregister; counters final


def test_count_only_probe_streams_nothing(live: Path) -> None:
    from kuprobe.live.api import backend

    exe = live / "x86_64" / "target"
    up = Uprobe(str(exe), symbol_name="loop_sum")
    t = Target(exe, "loop_sum", 1000, 3)
    register_uprobe(up)
    before = backend().dispatcher.events
    try:
        t.go()
    finally:
        unregister_uprobe(up)
    assert up.hits == 1000
    assert backend().dispatcher.events == before


def test_usdt_semaphore_ref_ctr_offset(live: Path) -> None:
    """The kernel increments the semaphore at ref_ctr_offset while the probe is armed."""
    exe = live / "x86_64" / "target"
    sem = file_offset_of(exe, "kuprobe_tick_semaphore")
    assert run(exe, "tick", 3).split()[-1] == "3"  # unarmed: tick(i) = i
    up = Uprobe(str(exe), symbol_name="tick", ref_ctr_offset=sem)
    register_uprobe(up)
    try:
        armed = run(exe, "tick", 3)
    finally:
        unregister_uprobe(up)
    assert armed.split()[-1] == str(1000 * 3 + 3)  # armed: tick(i) = i + 1000
    assert up.hits == 3
    assert run(exe, "tick", 3).split()[-1] == "3"


@pytest.mark.parametrize("variant", ["target-nopie", "target-static"])
def test_non_pie_executables(live: Path, variant: str) -> None:
    exe = live / "x86_64" / variant
    rets: list[int] = []
    up = Uprobe(
        str(exe),
        symbol_name="add",
        consumer=UprobeConsumer(ret_handler=lambda uc, f, regs: rets.append(regs.ax) or 0),
    )
    t = Target(exe, "add", 30, 5)
    register_uprobe(up)
    try:
        t.go()
    finally:
        unregister_uprobe(up)
    assert up.hits == up.ret_hits == 30
    assert rets == [3 * (5 + i) for i in range(30)]


@pytest.mark.parametrize("arch", ARCHES)
def test_output_unchanged_with_every_function_probed(live: Path, arch: str) -> None:
    exe = live / arch / "target"
    funcs = ["add", "rec", "fib", "loop_sum", "sw", "table_sum", "calls", "midpoint", "nop_entry"]
    expected = {f: run(exe, f, 20, 3) for f in funcs}
    probes = [
        Uprobe(
            str(exe),
            symbol_name=f,
            consumer=UprobeConsumer(handler=lambda uc, regs: 0, ret_handler=lambda uc, fn, regs: 0),
        )
        for f in funcs
    ]
    for p in probes:
        register_uprobe(p)
    try:
        got = {f: run(exe, f, 20, 3) for f in funcs}
    finally:
        for p in probes:
            unregister_uprobe(p)
    assert got == expected
    assert all(p.hits > 0 and p.hits == p.ret_hits for p in probes)
