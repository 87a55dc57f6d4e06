"""lib/test_kprobes.c's KUnit cases (kprobes_test suite), run on the model.

The targets are model_funcs.c's model_kprobe_target (value / 3), model_kprobe_target2
(value / 3 + 1) and the stacktrace driver/target pair.
"""

from __future__ import annotations

import random

import pytest

from kuprobe import Kprobe, Kretprobe, KretprobeInstance, regs_return_value
from kuprobe.model import Machine
from kuprobe.regs import PtRegs

DIV_FACTOR = 3


@pytest.fixture
def mkernel(mfuncs: str) -> Machine:
    """Strict: an assertion in a handler fails the test, as KUNIT_EXPECT in one would."""
    return Machine.load(mfuncs, space="kernel", strict=True)


@pytest.fixture
def rand1() -> int:
    return random.randrange(DIV_FACTOR + 1, 1 << 31)  # get_random_u32_above(div_factor)


def test_kprobe(mkernel: Machine, rand1: int) -> None:
    vals = {"pre": 0, "post": 0}

    def pre(p: Kprobe, regs: PtRegs) -> int:
        vals["pre"] = rand1 // DIV_FACTOR
        return 0

    def post(p: Kprobe, regs: PtRegs, flags: int) -> None:
        assert vals["pre"] == rand1 // DIV_FACTOR
        vals["post"] = vals["pre"] + DIV_FACTOR

    kp = Kprobe(symbol_name="model_kprobe_target", pre_handler=pre, post_handler=post)
    mkernel.register_kprobe(kp)
    assert mkernel.call("model_kprobe_target", rand1) == rand1 // DIV_FACTOR
    mkernel.unregister_kprobe(kp)
    assert vals["pre"] != 0 and vals["post"] != 0


def test_kprobes(mkernel: Machine, rand1: int) -> None:
    seen: list[str] = []
    kp = Kprobe(symbol_name="model_kprobe_target", pre_handler=lambda p, r: seen.append("1") or 0,
                post_handler=lambda p, r, f: seen.append("1post"))  # fmt: skip
    kp2 = Kprobe(symbol_name="model_kprobe_target2", pre_handler=lambda p, r: seen.append("2") or 0,
                 post_handler=lambda p, r, f: seen.append("2post"))  # fmt: skip
    mkernel.register_kprobes([kp, kp2])
    mkernel.call("model_kprobe_target", rand1)
    mkernel.call("model_kprobe_target2", rand1)
    mkernel.unregister_kprobes([kp, kp2])
    assert seen == ["1", "1post", "2", "2post"]


def _kretprobe(rand1: int, target: str, plus: int, krph: list[int]) -> Kretprobe:
    def entry_handler(ri: KretprobeInstance, regs: PtRegs) -> int:
        krph[0] = rand1 // DIV_FACTOR
        return 0

    def return_handler(ri: KretprobeInstance, regs: PtRegs) -> int:
        assert regs_return_value(regs) == rand1 // DIV_FACTOR + plus
        assert krph[0] != 0
        krph[0] = rand1
        return 0

    return Kretprobe(symbol_name=target, handler=return_handler, entry_handler=entry_handler)


def test_kretprobe(mkernel: Machine, rand1: int) -> None:
    krph = [0]
    rp = _kretprobe(rand1, "model_kprobe_target", 0, krph)
    mkernel.register_kretprobe(rp)
    mkernel.call("model_kprobe_target", rand1)
    mkernel.unregister_kretprobe(rp)
    assert krph[0] == rand1
    assert not mkernel.errors


def test_kretprobes(mkernel: Machine, rand1: int) -> None:
    krph = [0]
    rps = [_kretprobe(rand1, "model_kprobe_target", 0, krph),
           _kretprobe(rand1, "model_kprobe_target2", 1, krph)]  # fmt: skip
    mkernel.register_kretprobes(rps)
    mkernel.call("model_kprobe_target", rand1)
    assert krph[0] == rand1
    krph[0] = 0
    mkernel.call("model_kprobe_target2", rand1)
    assert krph[0] == rand1
    mkernel.unregister_kretprobes(rps)
    assert not mkernel.errors


def test_stacktrace_on_kretprobe(mkernel: Machine) -> None:
    """The handler learns the target's real return address (ri->ret_addr), not the
    trampoline's, and the caller still gets there."""
    real = mkernel.call("model_stacktrace_driver") - 1  # unprobed: the call's return address
    got = []
    rp = Kretprobe(symbol_name="model_stacktrace_target",
                   handler=lambda ri, r: got.append(ri.ret_addr) or 0)  # fmt: skip
    mkernel.register_kretprobe(rp)
    probed = mkernel.call("model_stacktrace_driver") - 1
    mkernel.unregister_kretprobe(rp)
    assert got == [real]
    # inside the target, __builtin_return_address(0) now reads the hijacked slot
    assert probed == mkernel.hooks.KRETPROBE_TRAMPOLINE


def test_stacktrace_on_nested_kretprobe(mkernel: Machine) -> None:
    rets: list[tuple[str, int]] = []
    outer = Kretprobe(
        symbol_name="model_stacktrace_driver",
        handler=lambda ri, r: rets.append(("driver", ri.ret_addr)) or 0,
    )
    inner = Kretprobe(symbol_name="model_stacktrace_target",
                      handler=lambda ri, r: rets.append(("target", ri.ret_addr)) or 0)  # fmt: skip
    real_inner = mkernel.call("model_stacktrace_driver") - 1
    mkernel.register_kretprobes([outer, inner])
    mkernel.call("model_stacktrace_driver")
    mkernel.unregister_kretprobes([outer, inner])
    assert rets == [("target", real_inner), ("driver", mkernel.hooks.CALL_RETURN)]
