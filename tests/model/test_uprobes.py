"""uprobes (kernel/events/uprobes.c, arch/x86/kernel/uprobes.c;
the patches "Kprobes: userspace probes new interfaces" and "uprobes/core: handle breakpoint and
signal step exception")."""

from __future__ import annotations

import errno
import signal
from collections.abc import Callable

import pytest

from kuprobe import ProbeError, Uprobe, UprobeConsumer, regs_return_value
from kuprobe.insn import boundaries
from kuprobe.model import Machine, ModelError, ProcessSignalled
from kuprobe.model.core.uprobes import MAX_URETPROBE_DEPTH, REGISTRY
from kuprobe.probes import UPROBE_HANDLER_REMOVE
from kuprobe.regs import PtRegs, instruction_pointer
from kuprobe.task import Task

from .archfacts import BOUNDARY_ERRNO, MID_REG, TRAP_PC_AFTER_BREAKPOINT, X86_ARCHES


def counting(log: list[object], ret: int = 0) -> UprobeConsumer:
    return UprobeConsumer(handler=lambda uc, r: log.append(instruction_pointer(r)) or ret)


# --- registration and identity --------------------------------------------------------------


def test_identity_is_inode_and_offset(user: Machine, funcs: str) -> None:
    up = Uprobe(funcs, symbol_name="add")
    user.register_uprobe(up)
    try:
        assert up.inode == user.image.inode
        assert up.file_offset == user.image.vaddr_to_offset(user.symbol_address("add"))
        # the same (inode, offset) given as a file offset is the same kernel uprobe
        same = Uprobe(funcs, offset=up.file_offset)
        user.register_uprobe(same)
        assert len(REGISTRY.files[up.inode].uprobes) == 1
        user.unregister_uprobe(same)
    finally:
        user.unregister_uprobe(up)


@pytest.mark.parametrize(
    ("kw", "code"),
    [({"symbol_name": "nope"}, errno.ENOENT), ({"offset": "table"}, errno.EINVAL),
     ({}, errno.EINVAL)],
)  # fmt: skip
def test_bad_uprobes(user: Machine, funcs: str, kw: dict[str, object], code: int) -> None:
    if kw.get("offset") == "table":  # a file offset in the data segment, not in text
        kw = {"offset": user.image.vaddr_to_offset(user.image.symbol("table").value)}
    with pytest.raises(ProbeError) as e:
        user.register_uprobe(Uprobe(funcs, **kw))  # type: ignore[arg-type]
    assert e.value.errno == code


def test_offset_inside_an_instruction_is_refused(user: Machine, funcs: str) -> None:
    """x86 (kuprobe's rule for symbol+offset, as can_probe()): -EILSEQ; arm64
    arch_uprobe_analyze_insn(): -EINVAL for an address that is not 4-byte aligned."""
    sym = user.image.symbol("loop_sum")
    off = next(o for o, size in boundaries(user.arch, user.read(sym.value, sym.size))
               if size > 1)  # fmt: skip
    with pytest.raises(ProbeError) as e:
        user.register_uprobe(Uprobe(funcs, symbol_name="loop_sum", offset=off + 1))
    assert e.value.errno == BOUNDARY_ERRNO[user.arch]


def test_missing_file_and_reregistration(user: Machine, funcs: str) -> None:
    with pytest.raises(ProbeError) as e:
        user.register_uprobe(Uprobe("/nonexistent/file", symbol_name="add"))
    assert e.value.errno == errno.ENOENT
    up = Uprobe(funcs, symbol_name="add")
    user.register_uprobe(up)
    with pytest.raises(ProbeError) as e:
        user.register_uprobe(up)
    assert e.value.errno == errno.EINVAL
    user.unregister_uprobe(up)


def test_uprobes_need_a_user_machine(kernel: Machine, funcs: str) -> None:
    with pytest.raises(ProbeError) as e:
        kernel.register_uprobe(Uprobe(funcs, symbol_name="add"))
    assert e.value.errno == errno.EINVAL


def test_one_entry_per_probed_file_dropped_with_its_last_probe(user: Machine, funcs: str) -> None:
    """One uprobe_module ("Kprobes: userspace probes new interfaces") per probed file,
    dropped with its last probe."""
    a, b = Uprobe(funcs, symbol_name="add"), Uprobe(funcs, symbol_name="fib")
    user.register_uprobe(a)
    user.register_uprobe(b)
    assert list(REGISTRY.files) == [user.image.inode]
    assert len(REGISTRY.files[user.image.inode].uprobes) == 2
    user.unregister_uprobe(a)
    assert user.image.inode in REGISTRY.files
    user.unregister_uprobe(b)
    assert user.image.inode not in REGISTRY.files


def test_global_to_the_file_now_and_later(funcs: str) -> None:
    """Uprobes apply to every process mapping the file (register_for_each_vma, uprobe_mmap)."""
    before = Machine.load(funcs)
    via = Machine.load(funcs)
    log: list[object] = []
    up = Uprobe(funcs, symbol_name="add", consumer=counting(log))
    via.register_uprobe(up)
    after = Machine.load(funcs)
    for m in (before, via, after):
        assert m.call("add", 1, 2) == 3
    via.unregister_uprobe(up)
    after.call("add", 1, 2)
    assert up.hits == 3
    add = before.symbol_address("add")
    assert log == [add, add, add]  # handlers see ip == the probed address


# --- consumers: handler_chain(), filter_chain() ---------------------------------------------


@pytest.mark.parametrize(
    ("semantics", "calls", "m1_keeps_breakpoint"),
    [("seed", (2, 1), True), ("6.1.0", (2, 1), False), ("today", (2, 1), False)],
)
def test_consumers_filters_and_remove(
    funcs: str, semantics: str, calls: tuple[int, int], m1_keeps_breakpoint: bool
) -> None:
    """The row uprobe_filter (kuprobe.model.semantics): the seed runs a consumer's filter at
    each hit; since v3.9 it also chooses the processes that get the breakpoint
    (filter_chain()), and a consumer's handler asks it again at the hit (uprobe_perf_func())."""
    m1 = Machine.load(funcs, semantics=semantics)
    m2 = Machine.load(funcs, semantics=semantics)
    l1: list[object] = []
    l2: list[object] = []
    filtered: list[Task] = []

    def only_m2(uc: UprobeConsumer, task: Task) -> bool:
        filtered.append(task)
        return task == m2.task

    a = Uprobe(funcs, symbol_name="add", consumer=counting(l1))
    b = Uprobe(
        funcs,
        symbol_name="add",
        consumer=UprobeConsumer(handler=lambda uc, r: l2.append(1) or 0, filter=only_m2),
    )
    m1.register_uprobe(a)
    m1.register_uprobe(b)
    m1.call("add", 1, 1)
    m2.call("add", 1, 1)
    assert (len(l1), len(l2)) == calls
    assert m1.task in filtered and m2.task in filtered
    m1.unregister_uprobe(a)
    # only b is left and it does not want m1: since v3.9 m1's breakpoint is gone
    # (filter_chain()); the seed's stays, its filter runs at the hit
    n = len(m1.hooks.UPROBE_SWBP_INSN)
    bp = m1.read(m1.symbol_address("add"), n) == m1.hooks.UPROBE_SWBP_INSN
    assert bp == m1_keeps_breakpoint
    assert m2.read(m2.symbol_address("add"), n) == m2.hooks.UPROBE_SWBP_INSN
    m1.unregister_uprobe(b)


@pytest.mark.parametrize(("semantics", "hits"), [("seed", 4), ("6.1.0", 2), ("today", 4)])
def test_handler_remove_stops_calls_from_that_process(
    funcs: str, semantics: str, hits: int
) -> None:
    """UPROBE_HANDLER_REMOVE (the row uprobe_filter): the seed ignores it; from v3.9 no more
    calls from that process, others keep the probe; since v6.12 only if filter_chain() finds
    no consumer still wanting the process, and one without a filter always does."""
    m1 = Machine.load(funcs, semantics=semantics)
    m2 = Machine.load(funcs, semantics=semantics)
    log: list[object] = []
    up = Uprobe(funcs, symbol_name="add", consumer=counting(log, UPROBE_HANDLER_REMOVE))
    m1.register_uprobe(up)
    for _ in range(3):
        assert m1.call("add", 2, 2) == 4
    m2.call("add", 2, 2)
    m1.unregister_uprobe(up)
    assert up.hits == hits  # once in m1 (where it is removed), once in m2


def test_handler_remove_with_a_filter_that_lets_go_today(funcs: str) -> None:
    """v6.12 on: UPROBE_HANDLER_REMOVE removes the breakpoint once the consumer's filter no
    longer wants the process (the filter is asked again under the lock)."""
    m1 = Machine.load(funcs)
    wanted = [True]
    up = Uprobe(funcs, symbol_name="add", consumer=UprobeConsumer(
        handler=lambda uc, r: UPROBE_HANDLER_REMOVE, filter=lambda uc, t: wanted[0]))  # fmt: skip
    m1.register_uprobe(up)
    m1.call("add", 2, 2)  # REMOVE, but the filter still wants m1: kept
    wanted[0] = False
    m1.call("add", 2, 2)  # the filter declines: not called, and removed
    m1.call("add", 2, 2)
    m1.unregister_uprobe(up)
    assert up.hits == 1
    assert any("filter_chain() keeps it" in e.detail for e in m1.trace)


# the first instruction of add() and loop_sum() that is stepped, not emulated: i386's
# push %ebp is emulated since v4.15 ("uprobes/x86: Emulate push insns for uprobe on x86")
STEPPED_OFFSET = {"i386": 1}


def stepped_uprobe(m: Machine, path: str, func: str, handler: Callable[..., int]) -> Uprobe:
    """A uprobe on ``func``'s first stepped instruction (STEPPED_OFFSET), registered in ``m``."""
    up = Uprobe(
        path,
        symbol_name=func,
        offset=STEPPED_OFFSET.get(m.arch, 0),
        consumer=UprobeConsumer(handler=handler),
    )
    m.register_uprobe(up)
    return up


# --- the step: utask states, XOL area, skip-sstep -----------------------------------------


@pytest.mark.parametrize(("semantics", "bp_hit"), [("seed", ["BP_HIT"]), ("today", [])])
def test_utask_states(funcs: str, semantics: str, bp_hit: list[str]) -> None:
    """uprobes/core patch: RUNNING -> BP_HIT (handlers) -> SSTEP -> SSTEP_ACK -> RUNNING;
    since about v3.7 ("uprobes: Kill UTASK_BP_HIT state") the handlers run in RUNNING."""
    user = Machine.load(funcs, semantics=semantics)
    seen = []
    up = stepped_uprobe(user, funcs, "loop_sum", lambda uc, r: seen.append(user.utask_state) or 0)
    user.call("loop_sum", 4)
    user.unregister_uprobe(up)
    assert seen == (bp_hit or ["RUNNING"])
    states = [e.status for e in user.trace if e.kind == "utask"]
    assert states == [*bp_hit, "SSTEP", "SSTEP_ACK", "RUNNING"]
    xol = user.uprobes.xol if user.uprobes else None
    assert xol is not None and xol.vaddr == user.hooks.XOL_AREA
    assert user.present(xol.vaddr)


def test_no_free_xol_slot_is_a_model_error(user: Machine, funcs: str) -> None:
    """xol_take_insn_slot() sleeps until another task frees a slot. With every slot held
    (taken by hand here), the task could only wait forever: a ModelError, not a hang."""
    assert user.uprobes is not None
    expected = user.call("loop_sum", 4)
    xol = user.uprobes.get_xol_area()
    held = []
    while xol.free:
        held.append(xol.get_slot())
    up = stepped_uprobe(user, funcs, "loop_sum", lambda uc, r: 0)
    try:
        with pytest.raises(ModelError, match="no free slot"):
            user.call("loop_sum", 4)
        for vaddr in held:
            xol.free_slot(vaddr)
        assert user.call("loop_sum", 4) == expected
    finally:
        user.unregister_uprobe(up)


@pytest.mark.parametrize("arch", X86_ARCHES)
def test_nop_pattern_is_skipped_not_stepped(user: Machine, funcs: str) -> None:
    """arch_uprobe_skip_sstep(): 0x66* {0x90 | 0x0f 0x1f | 0x0f 0x19 | 0x87 0xc0} is
    emulated, not stepped."""
    sym = user.image.symbol("nop_entry")
    off = user.read(sym.value, sym.size).index(b"\x66\x90")  # after i386's push %ebp
    up = Uprobe(funcs, symbol_name="nop_entry", offset=off,
                consumer=UprobeConsumer(handler=lambda u, r: 0))  # fmt: skip
    user.register_uprobe(up)
    assert user.call("nop_entry", 41) == 42
    user.unregister_uprobe(up)
    assert up.hits == 1
    assert any(e.kind == "skip_sstep" for e in user.trace)
    assert "SSTEP" not in [e.status for e in user.trace if e.kind == "utask"]


def test_handlers_change_registers(user: Machine, funcs: str) -> None:
    def handler(uc: UprobeConsumer, regs: PtRegs) -> int:
        setattr(regs, MID_REG[user.arch], 1000)
        return 0

    up = Uprobe(funcs, symbol_name="mid_label", consumer=UprobeConsumer(handler=handler))
    user.register_uprobe(up)
    assert user.call("midpoint", 1) == 993
    user.unregister_uprobe(up)


def test_not_present_page_during_the_step(muser: Machine, mfuncs: str) -> None:
    """A page fault in the xol step is fixed by the fault handler; the step completes."""
    muser.map(0x5000000, 0x1000, present=False)
    ups = []
    sym = muser.image.symbol("model_load")
    for off, _ in boundaries(muser.arch, muser.read(sym.value, sym.size)):
        up = Uprobe(mfuncs, symbol_name="model_load", offset=off)
        muser.register_uprobe(up)
        ups.append(up)
    assert muser.call("model_load", 0x5000008) == 0
    for up in ups:
        muser.unregister_uprobe(up)
    assert [up.hits for up in ups] == [1] * len(ups)


# --- signals: uprobe_deny_signal(), SIGTRAP ---------------------------------------------------


def test_signal_during_the_step_is_deferred(user: Machine, funcs: str) -> None:
    delivered = []
    user.sigaction(signal.SIGUSR1, lambda m, s: delivered.append(m.utask_state))
    up = stepped_uprobe(user, funcs, "add", lambda uc, r: user.kill(signal.SIGUSR1) or 0)
    assert user.call("add", 3, 4) == 7
    user.unregister_uprobe(up)
    assert delivered == ["RUNNING"]  # only once the step was done
    kinds = [(e.kind, e.status or e.detail) for e in user.trace]
    i_defer = kinds.index(("signal", "SSTEP"))
    i_ack = kinds.index(("utask", "SSTEP_ACK"))
    assert i_defer < i_ack


def test_fatal_signal_during_the_step_aborts_xol(user: Machine, funcs: str) -> None:
    """A fatal signal while stepping: SSTEP_TRAPPED -> abort_xol (ip back), then death."""
    up = stepped_uprobe(user, funcs, "add", lambda uc, r: user.kill(signal.SIGKILL) or 0)
    with pytest.raises(ProcessSignalled) as e:
        user.call("add", 3, 4)
    user.unregister_uprobe(up)
    assert e.value.signo == signal.SIGKILL
    states = [e.status for e in user.trace if e.kind == "utask"]
    assert states[-3:] == ["SSTEP", "SSTEP_TRAPPED", "RUNNING"]
    abort = [e for e in user.trace if e.kind == "abort_xol"]
    assert abort and abort[0].addr == user.symbol_address("add") + STEPPED_OFFSET.get(user.arch, 0)
    assert user.call("add", 3, 4) == 7  # a new process image: it runs again


def test_fault_in_the_step_is_sigsegv_after_abort(muser: Machine, mfuncs: str) -> None:
    """The xol instruction itself faults: xol_was_trapped -> SSTEP_TRAPPED -> abort_xol."""
    sym = muser.image.symbol("model_load")
    offs = [o for o, _ in boundaries(muser.arch, muser.read(sym.value, sym.size))]
    hit = None
    for off in offs:
        up = Uprobe(mfuncs, symbol_name="model_load", offset=off)
        muser.register_uprobe(up)
        muser.trace.clear()
        try:
            muser.call("model_load", 0x6000000)
        except ProcessSignalled as e:
            assert e.signo == signal.SIGSEGV
            if any(x.status == "SSTEP_TRAPPED" for x in muser.trace):
                hit = off
        finally:
            muser.unregister_uprobe(up)
    assert hit is not None


def test_breakpoint_not_ours_is_sigtrap(muser: Machine) -> None:
    """handle_swbp(): a breakpoint no uprobe owns is SIGTRAP (arm64: brk_handler() gives
    uprobes only UPROBES_BRK_IMM; model_trap's BRK #0 is SIGTRAP)."""
    with pytest.raises(ProcessSignalled) as e:
        muser.call("model_trap", 5)
    assert e.value.signo == signal.SIGTRAP
    got = []

    def once(m: Machine, s: int) -> None:
        got.append(s)
        m.sigaction(signal.SIGTRAP, None)  # the next SIGTRAP kills

    muser.sigaction(signal.SIGTRAP, once)
    if TRAP_PC_AFTER_BREAKPOINT[muser.arch]:  # int3: the handler returns after it
        assert muser.call("model_trap", 5) == 5
        assert got == [signal.SIGTRAP]
    else:  # BRK: the pc is the BRK's, so returning from the handler runs it again
        with pytest.raises(ProcessSignalled):
            muser.call("model_trap", 5)
        assert got == [signal.SIGTRAP]


# --- uretprobes ---------------------------------------------------------------------------------


def test_uretprobe_sees_return_value(user: Machine, funcs: str) -> None:
    rets = []

    def ret_handler(uc: UprobeConsumer, func: int, regs: PtRegs) -> int:
        rets.append((func, regs_return_value(regs)))
        return 0

    up = Uprobe(funcs, symbol_name="add", consumer=UprobeConsumer(ret_handler=ret_handler))
    user.register_uprobe(up)
    assert user.call("add", 30, 12) == 42
    user.unregister_uprobe(up)
    assert rets == [(user.symbol_address("add"), 42)]
    assert (up.hits, up.ret_hits) == (1, 1)


def test_recursion_100_deep_gives_101_entries_and_64_returns(muser: Machine, mfuncs: str) -> None:
    """MAX_URETPROBE_DEPTH (include/linux/uprobes.h): deeper returns are not probed, as the
    live kernel does."""
    entries, returns = [], []
    up = Uprobe(mfuncs, symbol_name="model_rec", consumer=UprobeConsumer(
        handler=lambda uc, r: entries.append(1) or 0,
        ret_handler=lambda uc, f, r: returns.append(regs_return_value(r)) or 0))  # fmt: skip
    muser.register_uprobe(up)
    assert muser.call("model_rec", 100) == 100
    muser.unregister_uprobe(up)
    assert len(entries) == 101
    assert len(returns) == MAX_URETPROBE_DEPTH == 64
    assert returns == list(range(37, 101))  # the outer 64 frames return 37 … 100


def test_ref_ctr_offset_counts_the_usdt_semaphore(user: Machine, funcs: str) -> None:
    """update_ref_ctr(): the semaphore counts while the uprobe is installed (target.c's tick
    returns i + 1000 while its semaphore is nonzero)."""
    sem = user.image.symbol("kuprobe_tick_semaphore").value
    ref = user.image.vaddr_to_offset(sem)
    assert user.call("tick", 5) == 5
    up = Uprobe(funcs, symbol_name="tick", ref_ctr_offset=ref)
    user.register_uprobe(up)
    assert int.from_bytes(user.read(sem, 2), "little") == 1
    assert user.call("tick", 5) == 1005
    with pytest.raises(ProbeError) as e:
        user.register_uprobe(Uprobe(funcs, symbol_name="tick", ref_ctr_offset=ref + 2))
    assert e.value.errno == errno.EINVAL
    user.unregister_uprobe(up)
    assert int.from_bytes(user.read(sem, 2), "little") == 0
    assert user.call("tick", 5) == 5


def test_a_consumer_may_run_probed_code(user: Machine, funcs: str) -> None:
    """Model-only: a handler's m.call() gets its own utask, so nested hits are whole."""
    inner: list[object] = []
    add = Uprobe(funcs, symbol_name="add", consumer=counting(inner))

    def outer_handler(uc: UprobeConsumer, regs: PtRegs) -> int:
        assert user.call("add", 1, 2) == 3
        assert user.utask_state == "BP_HIT"
        return 0

    outer = Uprobe(funcs, symbol_name="loop_sum", consumer=UprobeConsumer(handler=outer_handler))
    user.register_uprobe(add)
    user.register_uprobe(outer)
    assert user.call("loop_sum", 4) == 14
    user.unregister_uprobe(outer)
    user.unregister_uprobe(add)
    assert (outer.hits, add.hits) == (1, 1)
    assert user.utask_state == "RUNNING"


def test_frames_abandoned_by_longjmp_are_dropped(muser: Machine, mfuncs: str) -> None:
    """kernel/events/uprobes.c cleanup_return_instances() and arch_uretprobe_is_alive() (x86:
    alive while sp < ri->stack at a call; arm64 likewise, sp <= ri->stack for a chained call):
    model_jumper's four uretprobed frames never return (a longjmp leaves them); the next
    uretprobed call, made from a shallower sp, drops them, so they neither run ret_handlers nor
    count toward MAX_URETPROBE_DEPTH."""
    jumper = Uprobe(mfuncs, symbol_name="model_jumper", consumer=UprobeConsumer(
        ret_handler=lambda uc, f, r: 0))  # fmt: skip
    rec = Uprobe(mfuncs, symbol_name="model_rec", consumer=UprobeConsumer(
        ret_handler=lambda uc, f, r: 0))  # fmt: skip
    muser.register_uprobe(jumper)
    muser.register_uprobe(rec)
    assert muser.call("model_setjmp_driver", 3) == 102  # model_rec(2) + 100
    muser.unregister_uprobe(jumper)
    muser.unregister_uprobe(rec)
    assert (jumper.hits, jumper.ret_hits) == (4, 0)
    assert (rec.hits, rec.ret_hits) == (3, 3)
    assert muser.uprobes is not None and muser.uprobes.utask.depth == 0
    dropped = [e for e in muser.trace if e.kind == "uretprobe" and "dropped" in e.detail]
    assert len(dropped) == 4


def test_the_trampoline_with_no_return_instance_is_sigill(user: Machine) -> None:
    """kernel/events/uprobes.c handle_trampoline(): a task reaching the uretprobe trampoline
    with no return instance gets SIGILL ("handle uretprobe, sending SIGILL.")."""
    assert user.uprobes is not None
    trampoline = user.uprobes.get_xol_area().vaddr
    with pytest.raises(ProcessSignalled, match="no return instance") as e:
        user.call(trampoline)
    assert e.value.signo == signal.SIGILL
    warned = [x for x in user.trace if x.kind == "uretprobe" and "SIGILL" in x.detail]
    assert [x.addr for x in warned] == [trampoline]
    assert user.call("add", 3, 4) == 7  # a new process image: it runs again
