"""The kprobe rules of issue 3, each naming where it comes from."""

from __future__ import annotations

import errno

import pytest

from kuprobe import Kprobe, ProbeError
from kuprobe.insn import boundaries
from kuprobe.model import Machine, ModelError
from kuprobe.probes import KPROBE_FLAG_DISABLED, owner
from kuprobe.regs import PtRegs, instruction_pointer

from .archfacts import BOUNDARY_ERRNO, MID_REG, NOP_SIZE, REENTER_BUG, X86_ARCHES, return_now


def insn_offsets(m: Machine, func: str) -> list[int]:
    sym = m.image.symbol(func)
    return [off for off, _ in boundaries(m.arch, m.read(sym.value, sym.size), sym.value)]


# --- registration: kernel/kprobes.c register_kprobe(), arch can_probe() ------------------


def test_offset_inside_an_instruction_is_refused(kernel: Machine) -> None:
    """x86 can_probe(): -EILSEQ; arm64 arch_prepare_kprobe(): -EINVAL (not 4-byte aligned)."""
    sym = kernel.image.symbol("loop_sum")
    code = kernel.read(sym.value, sym.size)
    off = next(o for o, size in boundaries(kernel.arch, code) if size > 1)
    with pytest.raises(ProbeError) as e:
        kernel.register_kprobe(Kprobe(symbol_name="loop_sum", offset=off + 1))
    assert e.value.errno == BOUNDARY_ERRNO[kernel.arch]


def test_reregistration_is_einval(kernel: Machine) -> None:
    kp = Kprobe(symbol_name="add")
    kernel.register_kprobe(kp)
    with pytest.raises(ProbeError) as e:
        kernel.register_kprobe(kp)
    assert e.value.errno == errno.EINVAL
    kernel.unregister_kprobe(kp)
    kernel.register_kprobe(kp)  # unregistered: it may register again
    kernel.unregister_kprobe(kp)


@pytest.mark.parametrize(
    ("kw", "code"),
    [({"symbol_name": "nope"}, errno.ENOENT), ({"symbol_name": "add", "addr": 0x401000},
     errno.EINVAL), ({}, errno.EINVAL), ({"addr": 0x7FEFF000}, errno.EINVAL),
     ({"addr": 0x401000, "offset": 4}, errno.EINVAL)],
)  # fmt: skip
def test_bad_registrations(kernel: Machine, kw: dict[str, object], code: int) -> None:
    with pytest.raises(ProbeError) as e:
        kernel.register_kprobe(Kprobe(**kw))  # type: ignore[arg-type]
    assert e.value.errno == code


def test_kprobes_need_kernel_text(user: Machine) -> None:
    with pytest.raises(ProbeError) as e:
        user.register_kprobe(Kprobe(symbol_name="add"))
    assert e.value.errno == errno.EINVAL


def test_batch_registration_is_all_or_none(kernel: Machine) -> None:
    good, bad = Kprobe(symbol_name="add"), Kprobe(symbol_name="nope")
    with pytest.raises(ProbeError):
        kernel.register_kprobes([good, bad])
    assert not good.registered
    assert kernel.read(kernel.symbol_address("add"), 1) != kernel.hooks.BREAKPOINT_INSN


def test_arming_writes_the_breakpoint_and_unregister_restores(kernel: Machine) -> None:
    """arch_arm_kprobe()/arch_disarm_kprobe()."""
    addr = kernel.symbol_address("fib")
    orig = kernel.read(addr, 4)
    kp = Kprobe(symbol_name="fib")
    kernel.register_kprobe(kp)
    n = len(kernel.hooks.BREAKPOINT_INSN)
    assert kernel.read(addr, n) == kernel.hooks.BREAKPOINT_INSN
    assert owner(kp) is kernel
    kernel.unregister_kprobe(kp)
    assert kernel.read(addr, 4) == orig
    assert owner(kp) is None


def test_disabled_probe_does_not_fire(kernel: Machine) -> None:
    """KPROBE_FLAG_DISABLED, enable_kprobe(), disable_kprobe()."""
    kp = Kprobe(symbol_name="add", flags=KPROBE_FLAG_DISABLED)
    kernel.register_kprobe(kp)
    kernel.call("add", 1, 2)
    assert kp.hits == 0
    kernel.enable_kprobe(kp)
    kernel.call("add", 1, 2)
    kernel.disable_kprobe(kp)
    kernel.call("add", 1, 2)
    kernel.unregister_kprobe(kp)
    assert kp.hits == 1


# --- aggregate probes: kernel/kprobes.c aggr_pre_handler(), kprobes_inc_nmissed_count() ----


def test_aggregate_pre_handlers_run_newest_first_first_nonzero_stops(kernel: Machine) -> None:
    """add_new_kprobe(): list_add_rcu() puts each new kprobe at the head of the aggregate's
    list; aggr_pre_handler() walks it from there."""
    order: list[str] = []

    def mk(name: str, ret: int) -> Kprobe:
        return Kprobe(symbol_name="add", pre_handler=lambda p, r: order.append(name) or ret)

    a, b, c = mk("a", 0), mk("b", 0), mk("c", 0)
    kernel.register_kprobes([a, b, c])
    assert kernel.call("add", 2, 3) == 5
    assert order == ["c", "b", "a"]
    assert (a.hits, b.hits, c.hits) == (1, 1, 1)
    kernel.unregister_kprobes([a, b, c])

    order.clear()

    def skip_function(p: Kprobe, regs: PtRegs) -> int:
        # return 42 from the probed function at once: ip = return address (popped on x86)
        order.append("skip")
        return_now(regs, 42, kernel.hooks.word)
        return 1

    first = Kprobe(symbol_name="add", pre_handler=skip_function)
    second = Kprobe(symbol_name="add", pre_handler=lambda p, r: order.append("2nd") or 0)
    kernel.register_kprobes([second, first])
    assert kernel.call("add", 2, 3) == 42
    assert order == ["skip"]
    kernel.unregister_kprobes([first, second])


def test_a_miss_counts_on_every_child(kernel: Machine) -> None:
    a, b = Kprobe(symbol_name="add"), Kprobe(symbol_name="add")
    kernel.register_kprobes([a, b])
    outer = Kprobe(symbol_name="loop_sum", pre_handler=lambda p, r: kernel.call("add", 1, 2) * 0)
    kernel.register_kprobe(outer)
    kernel.call("loop_sum", 3)
    kernel.unregister_kprobes([a, b, outer])
    assert (a.nmissed, b.nmissed) == (1, 1)
    assert (a.hits, b.hits) == (1, 1)


# --- the trap flow: arch/x86/kernel/kprobes/core.c --------------------------------------


def test_statuses_seen_by_handlers(kernel: Machine) -> None:
    """kprobe_ctlblk: HIT_ACTIVE in pre_handler, HIT_SS while stepping, HIT_SSDONE in post."""
    seen = []
    kp = Kprobe(
        symbol_name="add",
        pre_handler=lambda p, r: seen.append(kernel.kprobe_status) or 0,
        post_handler=lambda p, r, f: seen.append(kernel.kprobe_status),
    )
    kernel.register_kprobe(kp)
    kernel.call("add", 1, 2)
    kernel.unregister_kprobe(kp)
    assert seen == ["HIT_ACTIVE", "HIT_SSDONE"]
    assert kernel.kprobe_status == "NONE"
    statuses = [e.status for e in kernel.trace if e.kind in ("kprobe", "singlestep", "post")]
    assert statuses == ["HIT_ACTIVE", "HIT_SS", "HIT_SSDONE"]


def test_nonzero_pre_handler_skips_step_and_post(kernel: Machine) -> None:
    """A nonzero pre_handler: no single-step, no post_handler; resume at regs.ip."""
    posts = []
    mid = kernel.symbol_address("mid_label")
    ip_after = mid + NOP_SIZE[kernel.arch]  # mid_label is a nop (funcs.c)

    def pre(p: Kprobe, regs: PtRegs) -> int:
        setattr(regs, MID_REG[kernel.arch], 100)
        setattr(regs, kernel.hooks.ip_field(), ip_after)
        return 1

    kp = Kprobe(symbol_name="mid_label", pre_handler=pre, post_handler=lambda *a: posts.append(1))
    kernel.register_kprobe(kp)
    assert kernel.call("midpoint", 4) == 93  # y = 100 at mid_label, returns y - 7
    kernel.unregister_kprobe(kp)
    assert posts == []
    assert not [e for e in kernel.trace if e.kind == "singlestep"]


def test_post_handler_sees_the_next_instruction(kernel: Machine) -> None:
    """resume_execution() runs before post_handler: ip is the original's successor."""
    sym = kernel.image.symbol("loop_sum")
    offs = insn_offsets(kernel, "loop_sum")
    seen = []
    kp = Kprobe(symbol_name="loop_sum", post_handler=lambda p, r, f: seen.append(
        instruction_pointer(r)))  # fmt: skip
    kernel.register_kprobe(kp)
    kernel.call("loop_sum", 3)
    kernel.unregister_kprobe(kp)
    assert seen == [sym.value + offs[1]]


@pytest.mark.parametrize("arch", X86_ARCHES)
def test_pushf_does_not_leak_the_trap_flag(mkernel: Machine) -> None:
    """resume_execution(): pushfl's pushed flags get TF/IF as before the hit."""
    sym = mkernel.image.symbol("model_pushf")
    code = mkernel.read(sym.value, sym.size)
    off = code.index(b"\x9c")
    kp = Kprobe(symbol_name="model_pushf", offset=off)
    mkernel.register_kprobe(kp)
    assert mkernel.call("model_pushf", 10) == 10
    mkernel.unregister_kprobe(kp)
    assert kp.hits == 1


def test_handlers_calling_the_probed_function_miss_twice(kernel: Machine) -> None:
    """lib/test_kprobes.c (test_kprobe_missed): pre and post handlers that call the probed
    function give nmissed == 2; reentrant hits run no handlers and are stepped over."""
    calls = []

    def pre(p: Kprobe, regs: PtRegs) -> int:
        calls.append("pre")
        assert kernel.call("add", 3, 4) == 7
        return 0

    def post(p: Kprobe, regs: PtRegs, flags: int) -> None:
        calls.append("post")
        assert kernel.call("add", 5, 6) == 11

    kp = Kprobe(symbol_name="add", pre_handler=pre, post_handler=post)
    kernel.register_kprobe(kp)
    assert kernel.call("add", 1, 2) == 3
    kernel.unregister_kprobe(kp)
    assert kp.nmissed == 2
    assert kp.hits == 3
    assert calls == ["pre", "post"]
    assert [e.status for e in kernel.trace if e.kind == "miss"] == ["HIT_ACTIVE", "HIT_SSDONE"]
    assert "REENTER" in [e.status for e in kernel.trace if e.kind == "singlestep"]


# --- "Kprobes- robust fault handling for i386": faults in handlers and while stepping ---

PAGE = 0x5000000


def test_handler_fault_fixed_by_fault_handler_is_retried(seed_kernel: Machine) -> None:
    """The i386 fault-handling patch: the fault_handler runs first; nonzero means handled,
    the access retried."""
    seed_kernel.map(PAGE, 0x1000, present=False)
    got, traps = [], []

    def fault_handler(p: Kprobe, regs: PtRegs, trapnr: int) -> int:
        traps.append(trapnr)
        seed_kernel.map(PAGE, 0x1000)  # make it present, then claim the fault
        return 1

    kp = Kprobe(
        symbol_name="add",
        pre_handler=lambda p, r: got.append(seed_kernel.copy_from_user(PAGE, 4)) or 0,
        post_handler=lambda p, r, f: got.append(b"post"),
        fault_handler=fault_handler,
    )
    seed_kernel.register_kprobe(kp)
    assert seed_kernel.call("add", 1, 2) == 3
    seed_kernel.unregister_kprobe(kp)
    assert got == [bytes(4), b"post"]
    assert traps == [seed_kernel.hooks.PAGE_FAULT_TRAPNR]
    assert kp.nmissed == 0


@pytest.mark.parametrize("where", ["pre", "post"])
def test_handler_fault_not_handled_abandons_the_handler(seed_kernel: Machine, where: str) -> None:
    """The i386 fault-handling patch: fault_handler declines -> nmissed++, handler
    abandoned, the original instruction still stepped, no post_handler for that hit; the
    system fault handler makes the page present."""
    seed_kernel.map(PAGE, 0x1000, present=False)
    done: list[str] = []

    def pre(p: Kprobe, regs: PtRegs) -> int:
        if where == "pre":
            seed_kernel.copy_from_user(PAGE, 4)
        done.append("pre")
        return 0

    def post(p: Kprobe, regs: PtRegs, flags: int) -> None:
        if where == "post":
            seed_kernel.copy_from_user(PAGE, 4)
        done.append("post")

    kp = Kprobe(symbol_name="add", pre_handler=pre, post_handler=post,
                fault_handler=lambda p, r, t: 0)  # fmt: skip
    seed_kernel.register_kprobe(kp)
    assert seed_kernel.call("add", 20, 22) == 42
    assert kp.nmissed == 1
    assert done == (["pre"] if where == "post" else [])
    assert "HIT_FAULT" in [e.status for e in seed_kernel.trace]
    assert seed_kernel.present(PAGE)
    done.clear()
    assert seed_kernel.call("add", 1, 2) == 3  # the next hit is whole again
    assert done == ["pre", "post"]
    seed_kernel.unregister_kprobe(kp)


@pytest.mark.parametrize("semantics", ["seed", "today"])
def test_fault_while_single_stepping_reexecutes_and_hits_again(mfuncs: str, semantics: str) -> None:
    """kprobe_fault_handler() ("Kprobes- robust fault handling for i386"): the stepped
    instruction faults: reset the probe, ip back to the probe address, the system handler
    fixes the page, the instruction re-executes and the probe hits again. The fault_handler
    is not called (today's kprobes have none: v5.14 removed it)."""
    mkernel = Machine.load(mfuncs, space="kernel", semantics=semantics)
    offsets = insn_offsets(mkernel, "model_load")
    faulted = []
    for i, off in enumerate(offsets[:-1]):
        page = PAGE + 0x10000 * i
        mkernel.map(page, 0x1000, present=False)
        pre, post, fh = [], [], []
        kp = Kprobe(symbol_name="model_load", offset=off,
                    pre_handler=lambda p, r: pre.append(1) or 0,  # noqa: B023
                    post_handler=lambda p, r, f: post.append(1),  # noqa: B023
                    fault_handler=(lambda p, r, t: fh.append(t) or 0)  # noqa: B023
                    if semantics == "seed" else None)  # fmt: skip
        mkernel.register_kprobe(kp)
        mkernel.trace.clear()
        assert mkernel.call("model_load", page + 8) == 0
        mkernel.unregister_kprobe(kp)
        if kp.hits == 2:
            faulted.append(off)
            assert (len(pre), len(post), fh, kp.nmissed) == (2, 1, [], 0)
            assert any(e.detail == "while single-stepping" for e in mkernel.trace)
        else:
            assert (kp.hits, len(pre), len(post)) == (1, 1, 1)
    assert len(faulted) == 1  # exactly the load instruction


# include/linux/kprobes.h: the kprobe_ctlblk states
KPROBE_STATUS = {"HIT_ACTIVE": 0x1, "HIT_SS": 0x2, "REENTER": 0x4, "HIT_SSDONE": 0x8}


@pytest.mark.parametrize("status", sorted(KPROBE_STATUS))
def test_a_hit_in_each_state_is_a_miss_or_the_kernels_bug(kernel: Machine, status: str) -> None:
    """reenter_kprobe(): a probe hit while another is current is a miss (nmissed++, stepped,
    no handler, the previous state restored), except where the kernel BUG()s (x86: in
    REENTER, "Unrecoverable kprobe detected"; arm64: in HIT_SS or REENTER).

    Ordinary code cannot hit a probe while one is being stepped (the step is one
    instruction; the kernel reaches it from its own trap path), so the state is set by hand,
    as if the probe at add were current."""
    pre: list[int] = []
    kp = Kprobe(symbol_name="add", pre_handler=lambda p, r: pre.append(1) or 0)
    kernel.register_kprobe(kp)
    assert kernel.kprobes is not None
    kcb = kernel.kprobes.kcb
    point = kernel.kprobes.points[kernel.symbol_address("add")]
    kcb.current, kcb.status = point, KPROBE_STATUS[status]
    if status in REENTER_BUG[kernel.arch]:
        with pytest.raises(ModelError, match="Unrecoverable kprobe detected"):
            kernel.call("add", 1, 2)
    else:
        assert kernel.call("add", 1, 2) == 3
        assert (kp.hits, kp.nmissed, pre, kernel.kprobe_status) == (1, 1, [], status)
    kcb.current, kcb.status = None, 0
    kernel.unregister_kprobe(kp)
    assert kernel.call("add", 1, 2) == 3


@pytest.mark.parametrize("arch", X86_ARCHES)
def test_trap_flag_and_interrupt_flag_around_the_step(funcs: str) -> None:
    """arch/x86/kernel/kprobes/core.c setup_singlestep(), resume_execution() (TF/IF in
    eflags): the step runs with TF set and IF clear; the post_handler sees TF clear and IF as
    before the hit. The rules of 5.10 (kuprobe.model.semantics): the trap flag steps (before
    v5.13), the post_handler runs after resume_execution()."""
    seed_kernel = Machine.load(funcs, space="kernel", semantics="5.10.0")
    seen: list[tuple[int, int]] = []

    def post(p: Kprobe, regs: PtRegs, flags: int) -> None:
        f = int(regs.flags)
        seen.append((f & 0x100, f & 0x200))

    kp = Kprobe(symbol_name="add", post_handler=post)
    seed_kernel.register_kprobe(kp)
    seed_kernel.call("add", 1, 2)
    seed_kernel.unregister_kprobe(kp)
    assert seen == [(0, 0x200)]
    assert seed_kernel.trace[[e.kind for e in seed_kernel.trace].index("debug")].addr != kp.addr
