"""kretprobes (kernel/kprobes.c register_kretprobe, pre_handler_kretprobe; x86
trampoline_handler)."""

from __future__ import annotations

import errno

import pytest

from kuprobe import Kprobe, Kretprobe, KretprobeInstance, ProbeError, regs_return_value
from kuprobe.model import Machine, ModelError
from kuprobe.regs import PtRegs, signed

from .archfacts import NESTED_HARDWARE_STEP


def test_handler_sees_the_return_value_and_real_return_address(kernel: Machine) -> None:
    seen = []

    def handler(ri: KretprobeInstance, regs: PtRegs) -> int:
        seen.append((signed(regs_return_value(regs), kernel.hooks.bits), ri.ret_addr, ri.task))
        return 0

    rp = Kretprobe(symbol_name="add", handler=handler)
    kernel.register_kretprobe(rp)
    assert kernel.call("add", -9, 4) == -5
    kernel.unregister_kretprobe(rp)
    assert seen == [(-5, kernel.hooks.CALL_RETURN, kernel.task)]
    assert (rp.hits, rp.nmissed) == (1, 0)


def test_every_return_of_a_recursion(mkernel: Machine) -> None:
    rets = []
    rp = Kretprobe(symbol_name="model_rec", handler=lambda ri, r: rets.append(
        regs_return_value(r)) or 0, maxactive=20)  # fmt: skip
    mkernel.register_kretprobe(rp)
    assert mkernel.call("model_rec", 6) == 6
    mkernel.unregister_kretprobe(rp)
    assert rets == [0, 1, 2, 3, 4, 5, 6]  # innermost first


def test_pool_of_maxactive_instances(mkernel: Machine) -> None:
    """maxactive instances in flight; a call finding none free counts in nmissed."""
    rp = Kretprobe(symbol_name="model_rec", handler=lambda ri, r: 0, maxactive=3)
    mkernel.register_kretprobe(rp)
    assert mkernel.call("model_rec", 9) == 9  # 10 calls, the outer 3 get an instance
    assert (rp.hits, rp.nmissed) == (3, 7)
    assert mkernel.call("model_rec", 1) == 1  # instances were recycled
    mkernel.unregister_kretprobe(rp)
    assert (rp.hits, rp.nmissed) == (5, 7)


def test_default_maxactive(mkernel: Machine) -> None:
    """maxactive 0: kernel/kprobes.c register_kretprobe() takes maxactive <= 0 as
    max(10, 2 * num_possible_cpus()) with CONFIG_PREEMPTION (Debian's kernels), which is 10
    on the model's two possible CPUs (num_possible_cpus() alone would be 2)."""
    rp = Kretprobe(symbol_name="model_rec", handler=lambda ri, r: 0)
    mkernel.register_kretprobe(rp)
    assert mkernel.call("model_rec", 30) == 30
    mkernel.unregister_kretprobe(rp)
    assert (rp.hits, rp.nmissed) == (10, 21)  # 31 calls: the outer 10 get an instance


def test_entry_handler_and_data(kernel: Machine) -> None:
    """entry_handler nonzero: no return handler for that call; data is per instance."""
    n = [0]
    got = []

    def entry(ri: KretprobeInstance, regs: PtRegs) -> int:
        n[0] += 1
        ri.data[:1] = bytes([n[0]])
        return 1 if n[0] % 2 == 0 else 0

    def handler(ri: KretprobeInstance, regs: PtRegs) -> int:
        got.append(bytes(ri.data))
        return 0

    rp = Kretprobe(symbol_name="loop_sum", handler=handler, entry_handler=entry, data_size=4)
    kernel.register_kretprobe(rp)
    for _ in range(4):
        assert kernel.call("loop_sum", 3) == 5
    kernel.unregister_kretprobe(rp)
    assert got == [bytes([1, 0, 0, 0]), bytes([3, 0, 0, 0])]
    assert (rp.hits, rp.nmissed) == (2, 0)


def test_kprobes_hit_inside_a_kretprobe_handler_are_missed(kernel: Machine) -> None:
    """trampoline_handler() runs with kprobe_busy current: probes hit there are missed."""
    kp = Kprobe(symbol_name="add")
    rp = Kretprobe(symbol_name="loop_sum", handler=lambda ri, r: kernel.call("add", 1, 1) * 0)
    kernel.register_kprobe(kp)
    kernel.register_kretprobe(rp)
    kernel.call("loop_sum", 2)
    kernel.unregister_kretprobe(rp)
    kernel.unregister_kprobe(kp)
    assert (kp.hits, kp.nmissed) == (1, 1)


# include/linux/kprobes.h: KRETPROBE_MAX_DATA_SIZE 4096; register_kretprobe(): a larger
# data_size is -E2BIG
@pytest.mark.parametrize(
    ("kw", "code"),
    [({"symbol_name": "add", "offset": 1}, errno.EINVAL),
     ({"symbol_name": "add", "data_size": 4097}, errno.E2BIG),
     ({"symbol_name": "nope"}, errno.ENOENT),
     ({"symbol_name": "add", "maxactive": -1}, errno.EINVAL)],
)  # fmt: skip
def test_bad_kretprobes(kernel: Machine, kw: dict[str, object], code: int) -> None:
    with pytest.raises(ProbeError) as e:
        kernel.register_kretprobe(Kretprobe(**kw))  # type: ignore[arg-type]
    assert e.value.errno == code


def test_the_largest_data_size_is_accepted(kernel: Machine) -> None:
    """KRETPROBE_MAX_DATA_SIZE (4096) itself is allowed: each instance gets its bytes."""
    sizes = []
    rp = Kretprobe(symbol_name="add", handler=lambda ri, r: sizes.append(len(ri.data)) or 0,
                   data_size=4096)  # fmt: skip
    kernel.register_kretprobe(rp)
    assert kernel.call("add", 1, 2) == 3
    kernel.unregister_kretprobe(rp)
    assert sizes == [4096]


def test_unregister_with_an_instance_in_flight(kernel: Machine) -> None:
    """Unregistered mid-call: the call still returns right, no handler runs (ri->rp NULL)."""
    calls = []
    rp = Kretprobe(symbol_name="calls", handler=lambda ri, r: calls.append(1) or 0)

    def pre(p: Kprobe, regs: PtRegs) -> int:
        if rp.registered:
            kernel.unregister_kretprobe(rp)
        return 0

    kp = Kprobe(symbol_name="add", pre_handler=pre)
    kernel.register_kretprobe(rp)
    kernel.register_kprobe(kp)
    expected = Machine.load(kernel.image.path).call("calls", 4)
    assert kernel.call("calls", 4) == expected
    kernel.unregister_kprobe(kp)
    assert calls == []
    assert not rp.registered


def test_a_fault_in_a_kretprobe_handler_takes_the_ordinary_path(kernel: Machine) -> None:
    kernel.map(0x5000000, 0x1000, present=False)
    got = []
    rp = Kretprobe(
        symbol_name="add",
        handler=lambda ri, r: got.append(kernel.copy_from_user(0x5000000, 2)) or 0,
    )
    kernel.register_kretprobe(rp)
    assert kernel.call("add", 1, 2) == 3
    kernel.unregister_kretprobe(rp)
    assert got == [b"\0\0"]
    assert (rp.hits, rp.nmissed) == (1, 0)


def test_a_kprobe_and_a_kretprobe_share_the_entry(kernel: Machine) -> None:
    """register_aggr_kprobe(): the kretprobe's entry kprobe aggregates with other kprobes."""
    order: list[str] = []
    kp = Kprobe(symbol_name="add", pre_handler=lambda p, r: order.append("kprobe") or 0)
    rp = Kretprobe(symbol_name="add", entry_handler=lambda ri, r: order.append("entry") or 0,
                   handler=lambda ri, r: order.append("return") or 0)  # fmt: skip
    kernel.register_kprobe(kp)
    kernel.register_kretprobe(rp)
    assert kernel.call("add", 1, 2) == 3
    outer = Kprobe(symbol_name="loop_sum", pre_handler=lambda p, r: kernel.call("add", 1, 1) * 0)
    kernel.register_kprobe(outer)
    kernel.call("loop_sum", 2)  # add from a handler: a reentrant hit, missed by both
    kernel.unregister_kprobe(outer)
    kernel.unregister_kretprobe(rp)
    assert kernel.call("add", 1, 2) == 3
    kernel.unregister_kprobe(kp)
    assert order == ["entry", "kprobe", "return", "kprobe"]  # the newest first
    assert (kp.hits, kp.nmissed, rp.hits, rp.nmissed) == (3, 1, 1, 1)


# --- the trampoline designs: the patch "Avoid using kprobe in the arm64 kretprobe trampoline" --


def _kretprobe_calling_a_kprobed_function(m: Machine) -> tuple[Kprobe, Kretprobe]:
    inner = Kprobe(symbol_name="add")
    rp = Kretprobe(symbol_name="model_kprobe_target",
                   handler=lambda ri, r: m.call("add", 1, 2) * 0)  # fmt: skip
    m.register_kprobe(inner)
    m.register_kretprobe(rp)
    return inner, rp


@pytest.mark.parametrize("semantics", ["today", "seed"])
def test_direct_trampoline_lets_a_handler_call_a_kprobed_function(
    mfuncs: str, semantics: str
) -> None:
    """The trampoline saves the registers and calls the handler (kretprobe_trampoline_holder
    of the patch, today's __kretprobe_trampoline): the kprobe hit inside the handler is a
    plain reentry, missed and stepped, on every arch and either step design."""
    m = Machine.load(mfuncs, space="kernel", semantics=semantics)
    inner, rp = _kretprobe_calling_a_kprobed_function(m)
    assert m.call("model_kprobe_target", 9) == 3
    assert (rp.hits, inner.hits, inner.nmissed) == (1, 1, 1)
    m.unregister_kretprobe(rp)
    m.unregister_kprobe(inner)


def test_kprobe_trampoline_nests_debug_exceptions(mfuncs: str, arch: str) -> None:
    """The earlier design: a kprobe on the trampoline runs the handler in its own debug
    exception. With the hardware single-step of "arm64: Kprobes with single stepping support"
    (semantics="seed") a kprobe hit in that handler needs a nested debug exception, which
    AArch64 does not take: the patch's "unexpected single-step error". x86 (int3 and TF
    nest) and today's arm64 (the step ends on a BRK) step it."""
    m = Machine.load(mfuncs, space="kernel", semantics="seed", kretprobe_trampoline="kprobe")
    inner, rp = _kretprobe_calling_a_kprobed_function(m)
    if NESTED_HARDWARE_STEP[arch]:
        assert m.call("model_kprobe_target", 9) == 3
        assert (rp.hits, inner.hits, inner.nmissed) == (1, 1, 1)
    else:
        with pytest.raises(ModelError, match="unexpected single-step error"):
            m.call("model_kprobe_target", 9)
        assert (rp.hits, inner.hits) == (1, 1)
    today = Machine.load(mfuncs, space="kernel", kretprobe_trampoline="kprobe")
    inner2, rp2 = _kretprobe_calling_a_kprobed_function(today)
    assert today.call("model_kprobe_target", 9) == 3
    assert (rp2.hits, inner2.hits, inner2.nmissed) == (1, 1, 1)


@pytest.mark.parametrize("design", ["direct", "kprobe"])
def test_the_trampoline_with_no_instance_is_a_kernel_oops(funcs: str, design: str) -> None:
    """__kretprobe_trampoline_handler(): no instance for this frame is BUG_ON(1) ("Return
    address not found ... Maybe there is a bug in the kernel.")."""
    m = Machine.load(funcs, space="kernel", kretprobe_trampoline=design)
    with pytest.raises(ModelError, match="kernel oops: the kretprobe trampoline"):
        m.call(m.hooks.KRETPROBE_TRAMPOLINE)
