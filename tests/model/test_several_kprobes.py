"""Several kprobes in one function (issue 12, item 4): each one registered never changes what
the next may take. The kernel decodes through recover_probed_instruction() (arch/x86/kernel/
kprobes/core.c: can_probe(), __copy_instruction()); the model recovers the bytes under its
own breakpoints the same way. tests/vm/test_kprobe_several.py checks the same against the
guest kernel, on its own functions.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from kuprobe import Kprobe, ProbeError
from kuprobe.insn import disassembler
from kuprobe.model import Machine

from .archfacts import X86_ARCHES

# functions with calls, branches, a loop, a switch, a jump table and recursion
CASES = [
    ("target", "calls"),
    ("target", "table_sum"),
    ("target", "sw"),
    ("target", "fib"),
    ("model_funcs", "model_jumptable"),
]


def verdict(m: Machine, func: str, off: int) -> int:
    """0 if a kprobe at func+off registers (then it goes again), else its errno."""
    kp = Kprobe(symbol_name=func, offset=off)
    try:
        m.register_kprobe(kp)
    except ProbeError as e:
        return e.errno or -1
    m.unregister_kprobe(kp)
    return 0


@pytest.mark.parametrize(("stem", "func"), CASES)
def test_every_offset_while_every_instruction_start_holds_a_kprobe(
    targets: Path, arch: str, stem: str, func: str
) -> None:
    path = targets / arch / f"{stem}-static"
    alone = Machine.load(path, space="kernel", trace=False)
    size = alone.image.symbol(func).size
    single = {off: verdict(alone, func, off) for off in range(size)}
    assert 0 < list(single.values()).count(0) < size
    m = Machine.load(path, space="kernel", trace=False)
    held = []
    for off in sorted(o for o, v in single.items() if v == 0):
        kp = Kprobe(symbol_name=func, offset=off)
        m.register_kprobe(kp)
        held.append(kp)
    start = m.symbol_address(func)
    assert m.read(start, size) != alone.read(start, size)  # breakpoints everywhere
    several = {off: verdict(m, func, off) for off in range(size)}
    assert several == single
    for kp in held:
        m.unregister_kprobe(kp)
    assert m.read(start, size) == alone.read(start, size)


@pytest.mark.parametrize("arch", X86_ARCHES)
def test_an_int3_not_ours_is_refused_and_decoded_past(targets: Path, arch: str) -> None:
    """An int3 the kprobes did not put there (padding after a ret, another debugger's):
    __copy_instruction() refuses it (-EINVAL); v6.1's can_probe() decodes it as a one-byte
    instruction, so the offsets after it stay probe-able."""
    m = Machine.load(targets / arch / "target-static", space="kernel", trace=False)
    start = m.symbol_address("nop_entry")
    # the one-byte nop of funcs.c's nop_entry() becomes an int3
    off = next(i.address - start for i in disassembler(arch).disasm(m.read(start, 16), start)
               if bytes(i.bytes) == b"\x90")  # fmt: skip
    m.write(start + off, b"\xcc")
    assert verdict(m, "nop_entry", off) == errno.EINVAL
    assert verdict(m, "nop_entry", off + 1) == 0
    kp = Kprobe(symbol_name="nop_entry", offset=off + 1)
    m.register_kprobe(kp)
    assert verdict(m, "nop_entry", off) == errno.EINVAL
    m.unregister_kprobe(kp)
