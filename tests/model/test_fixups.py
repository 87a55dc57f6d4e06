"""resume_execution() / arch_uprobe_post_xol(): the fix-ups after a step out of line.

arch/x86/kernel/kprobes/core.c resume_execution(): a relative call's pushed return address
and new ip are made relative to the original; relative jmp/jcc get their ip fixed; ret and
absolute indirect jmp need nothing; an absolute indirect call only its return address;
__copy_instruction() moves a %rip-relative displacement for the slot (x86_64).

arm64 steps no instruction that reads or writes the pc: arch/arm64/kernel/probes/
simulate-insn.c simulates bl, b.cond, ret, blr, br, cbz/cbnz, tbz/tbnz and adr/adrp at the
probed address, so the same kinds come out right without a fix-up.
"""

from __future__ import annotations

import errno

import pytest

from kuprobe import Kprobe, ProbeError, Uprobe, UprobeConsumer
from kuprobe.insn import disassembler
from kuprobe.model import ARCH_HOOKS, Machine
from kuprobe.regs import PtRegs, instruction_pointer

from .archfacts import return_address
from .bare import count_insns

# (kind, file stem, function, argument, how to find the instruction)
X86_KINDS = [
    ("call rel", "target", "calls", 5, lambda i: i.mnemonic == "call" and "0x" in i.op_str),
    ("jcc rel", "target", "table_sum", 9, lambda i: i.mnemonic in ("jne", "jg", "jl", "jle")),
    ("ret", "target", "fib", 7, lambda i: i.mnemonic == "ret"),
    ("call indirect", "model_funcs", "model_indirect", 3,
     lambda i: i.mnemonic == "call" and "0x" not in i.op_str),
    ("jmp indirect", "model_funcs", "model_jumptable", 2,
     lambda i: i.mnemonic == "jmp" and "[" in i.op_str),
    ("rip-relative", "target", "table_sum", 9, lambda i: "rip" in i.op_str),
]  # fmt: skip
ARM64_KINDS = [
    ("call rel", "target", "calls", 5, lambda i: i.mnemonic == "bl"),
    ("jcc rel", "target", "table_sum", 9, lambda i: i.mnemonic.startswith("b.")),
    ("ret", "target", "fib", 7, lambda i: i.mnemonic == "ret"),
    ("call indirect", "model_funcs", "model_indirect", 3, lambda i: i.mnemonic == "blr"),
    ("jmp indirect", "model_funcs", "model_branches", 11, lambda i: i.mnemonic == "br"),
    ("pc-relative", "target", "table_sum", 9, lambda i: i.mnemonic == "adrp"),
    ("pc-relative adr", "model_funcs", "model_branches", 11, lambda i: i.mnemonic == "adr"),
    ("cbz", "model_funcs", "model_branches", 11, lambda i: i.mnemonic == "cbnz"),
    ("tbz", "model_funcs", "model_branches", 11, lambda i: i.mnemonic == "tbz"),
    ("tbnz", "model_funcs", "model_branches", 11, lambda i: i.mnemonic == "tbnz"),
]  # fmt: skip
KINDS = {"x86_64": X86_KINDS, "i386": X86_KINDS, "arm64": ARM64_KINDS}


def find(m: Machine, func: str, pred: object) -> tuple[int, int, str]:
    sym = m.image.symbol(func)
    for insn in disassembler(m.arch).disasm(m.read(sym.value, sym.size), sym.value):
        if pred(insn):  # type: ignore[operator]
            return insn.address, insn.size, f"{insn.mnemonic} {insn.op_str}"
    raise AssertionError(f"{func} has no such instruction on {m.arch}")


# Every arch with every kind it has (i386 has no %rip-relative mode).
CASES = [
    pytest.param(a, *k, id=f"{a}-{k[0]}")
    for a in sorted(ARCH_HOOKS)
    for k in KINDS[a]
    if not (k[0] == "rip-relative" and a == "i386")
]


@pytest.mark.parametrize(("arch", "kind", "stem", "func", "arg", "pred"), CASES)
def test_fixup(targets: object, arch: str, kind: str, stem: str, func: str, arg: int,
               pred: object) -> None:  # fmt: skip
    path = f"{targets}/{arch}/{stem}-static"
    expected, executed = count_insns(path, arch, func, arg)
    # 5.10: the trap flag's step and resume_execution()'s fix-ups before the post_handler;
    # today: the emulated branches (kuprobe.model.semantics)
    for semantics in ("5.10.0", "today"):
        k = Machine.load(path, space="kernel", semantics=semantics)
        addr, size, text = find(k, func, pred)
        after: list[tuple[int, int]] = []

        def post(p: Kprobe, regs: PtRegs, flags: int) -> None:
            after.append((instruction_pointer(regs), return_address(regs)))  # noqa: B023

        kp = Kprobe(addr=addr, post_handler=post)
        try:
            k.register_kprobe(kp)
        except ProbeError as e:
            # prepare_emulation() (v5.13 on) refuses an indirect jmp through memory
            assert (semantics, kind, e.errno) == ("today", "jmp indirect", errno.EOPNOTSUPP)
            assert arch != "arm64"
            continue
        assert k.call(func, arg) == expected, text
        k.unregister_kprobe(kp)
        assert kp.hits == executed[addr] > 0, text
        slot = k.kprobes.points if k.kprobes else {}
        assert not slot
        for ip, tos in after:  # never inside the slot page: always the original's world
            assert not k.hooks.INSN_PAGES <= ip < k.hooks.INSN_PAGES + 0x1000, text
            if kind.startswith("call"):
                assert tos == addr + size, f"{text}: return address {tos:#x}"
    u = Machine.load(path)
    up = Uprobe(path, offset=u.image.vaddr_to_offset(addr), consumer=UprobeConsumer())
    u.register_uprobe(up)
    assert u.call(func, arg) == expected, text
    u.unregister_uprobe(up)
    assert up.hits == executed[addr], text
