"""x86 kprobes: which instructions a kprobe may take, and the ones today's kernels emulate.

Sources: arch/x86/kernel/kprobes/core.c as of v6.1 (the guests' kernel): arch_prepare_kprobe()
-> can_probe() (-EILSEQ off an instruction boundary, decoded through
recover_probed_instruction()), arch_copy_kprobe() -> __copy_instruction() (returns 0, so
-EINVAL) and prepare_emulation() (-EOPNOTSUPP), and the emulate ops kprobe_emulate_*() that
run instead of a single-step since "x86/kprobes: Use int3 instead of debug trap for
single-step" (v5.13). Data as data: each refusal is a row with its errno, its kernel function
and why.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import capstone

from kuprobe.model.arch.x86_insn import (
    INT3_INSN_OPCODE,
    MOV_SREG_OPCODE,
    insn_opcode,
    insn_undecoded,
)

# arch/x86/include/asm/processor-flags.h: the flags the condition codes read
X86_EFLAGS_CF = 0x001
X86_EFLAGS_PF = 0x004
X86_EFLAGS_ZF = 0x040
X86_EFLAGS_SF = 0x080
X86_EFLAGS_IF = 0x200
X86_EFLAGS_OF = 0x800
# arch/x86/include/asm/emulate_prefix.h: "ud2; .ascii xen" and "ud2; .ascii kvm"
XEN_EMULATE_PREFIX = b"\x0f\x0b\x78\x65\x6e"
KVM_EMULATE_PREFIX = b"\x0f\x0b\x6b\x76\x6d"
# arch/x86/include/asm/insn.h: insn_masking_exception() compares the opcode with its
# POP_SS_OPCODE, 0x1f (which is pop ds: pop ss is 0x17); the rule as the kernel has it
KERNEL_POP_SS_OPCODE = 0x1F


@dataclass(frozen=True)
class KprobeRefusal:
    """One reason arch/x86/kernel/kprobes/core.c refuses a kprobe on an instruction."""

    errno: int
    function: str  # the kernel function that refuses
    why: str
    since_int3_step: bool = False  # only with prepare_emulation() (v5.13 on)


# __copy_instruction() returns 0 (arch_copy_kprobe(): -EINVAL)
INT3 = KprobeRefusal(
    errno.EINVAL,
    "__copy_instruction",
    "an int3 already there (another subsystem's breakpoint, or padding)",
)
EMULATE_PREFIX = KprobeRefusal(
    errno.EINVAL, "__copy_instruction", "a forced-emulation prefix (insn_has_emulate_prefix())"
)
MASKING = KprobeRefusal(
    errno.EINVAL,
    "__copy_instruction",
    "it masks exceptions for the next one (insn_masking_exception(): mov to ss, pop ss)",
)
UNDECODED = KprobeRefusal(
    errno.EINVAL,
    "__copy_instruction",
    "the kernel's instruction decoder does not know it (insn_decode_kernel() fails)",
)
# prepare_emulation() returns -EOPNOTSUPP
FAR_ABSOLUTE = KprobeRefusal(
    errno.EOPNOTSUPP, "prepare_emulation", "a far call/jmp absolute (segment not supported)", True
)
IRET = KprobeRefusal(errno.EOPNOTSUPP, "prepare_emulation", "in-kernel iret not supported", True)
VMX = KprobeRefusal(
    errno.EOPNOTSUPP, "prepare_emulation", "a VM extension (0f 01 with modrm reg 0, mod 3)", True
)
FAR_INDIRECT = KprobeRefusal(
    errno.EOPNOTSUPP, "prepare_emulation", "a far call/jmp indirect (ff /3, ff /5)", True
)
INDIRECT_MEMORY = KprobeRefusal(
    errno.EOPNOTSUPP,
    "prepare_emulation",
    'an indirect call/jmp through memory ("TODO: support memory addressing")',
    True,
)
INDIRECT_ADDR_SIZE = KprobeRefusal(
    errno.EOPNOTSUPP, "prepare_emulation", "an indirect call/jmp with an address-size prefix", True
)
# prepare_emulation(): opcode (after prefixes) -> refusal, for the one-byte opcodes
ONE_BYTE_REFUSALS: dict[int, KprobeRefusal] = {
    0x9A: FAR_ABSOLUTE,
    0xEA: FAR_ABSOLUTE,
    0xCF: IRET,
}  # fmt: skip


def kprobe_refuses(
    insn: bytes, is64: bool, *, int3_step: bool = True, sha512_vex: bool = True
) -> KprobeRefusal | None:
    """Why arch_prepare_kprobe() refuses a kprobe on ``insn`` (the recovered bytes), or None.

    ``int3_step``: the kernel single-steps with an int3 after the slot (v5.13 on), whose
    prepare_emulation() refuses what it cannot emulate; before it those were stepped.
    ``sha512_vex``: the decoder's map has the VEX-only SHA512 forms (a semantics row).

    The checks read ``insn->opcode.bytes[0]`` whatever the encoding, so a VEX or EVEX
    instruction whose opcode byte is 0xcc, 0x9a, 0xea or 0xcf is refused as int3, far
    call/jmp or iret would be (measured on 6.1: vfmsub132ps, vgf2p8mulb, vpminsw, vrsqrt28ps).
    """
    if insn[:5] in (XEN_EMULATE_PREFIX, KVM_EMULATE_PREFIX):
        return EMULATE_PREFIX
    if insn_undecoded(insn, is64, sha512_vex=sha512_vex):
        return UNDECODED
    op = insn_opcode(insn, is64)
    op1 = op.opcode[0]
    if op1 == INT3_INSN_OPCODE:
        return INT3
    modrm = op.modrm
    reg = (modrm >> 3) & 7 if modrm is not None else None
    mod = modrm >> 6 if modrm is not None else None
    if op1 == KERNEL_POP_SS_OPCODE or (op1 == MOV_SREG_OPCODE and reg == 2):
        return MASKING
    if not int3_step:
        return None
    if op1 in ONE_BYTE_REFUSALS:
        return ONE_BYTE_REFUSALS[op1]
    if op.opcode[:2] == b"\x0f\x01" and len(op.opcode) == 2 and reg == 0 and mod == 3:
        return VMX
    if op1 == 0xFF and reg in (3, 5):
        return FAR_INDIRECT
    if op1 == 0xFF and reg in (2, 4):
        if 0x67 in op.prefixes:
            return INDIRECT_ADDR_SIZE
        if mod != 3:
            return INDIRECT_MEMORY
    return None


# --- the emulate ops (kprobe_emulate_*, int3_emulate_* of arch/x86/include/asm/text-patching.h)


def emulate_cc(flags: int, cc: int) -> bool:
    """__emulate_cc(): condition ``cc`` (the low nibble of a jcc opcode) on ``flags``."""
    cf, zf = bool(flags & X86_EFLAGS_CF), bool(flags & X86_EFLAGS_ZF)
    sf, of = bool(flags & X86_EFLAGS_SF), bool(flags & X86_EFLAGS_OF)
    base = (of, cf, zf, cf or zf, sf, bool(flags & X86_EFLAGS_PF), sf != of, zf or sf != of)
    return base[cc >> 1] != bool(cc & 1)


def _reg_field(capstone_name: str) -> str:
    """A capstone register name (rax, eax, r9) -> its pt_regs field (ax, r9)."""
    if capstone_name[0] in "re" and capstone_name[1:] in ("ax", "bx", "cx", "dx", "sp", "bp",
                                                          "si", "di"):  # fmt: skip
        return capstone_name[1:]
    return capstone_name


Emulate = Callable[[Any, Any, int, int], None]  # (mem, regs, next ip, word size)


def prepare_emulation(insn: Any, is64: bool) -> tuple[str, Emulate] | None:
    """prepare_emulation(): the emulate op of a decoded (capstone) instruction, or None (it
    is stepped in the slot). Every op leaves ``regs.ip`` where the instruction goes next."""
    raw = bytes(insn.bytes)
    op = insn_opcode(raw, is64)
    op1 = op.opcode[0]
    imm = insn.operands and insn.operands[0].type == capstone.x86.X86_OP_IMM
    target = int(insn.operands[0].imm) if imm else 0

    def push(mem: Any, regs: Any, value: int, word: int) -> None:
        sp = (int(regs.sp) - word) & ((1 << (8 * word)) - 1)
        mem.write(sp, (value & ((1 << (8 * word)) - 1)).to_bytes(word, "little"))
        regs.sp = sp

    def pop(mem: Any, regs: Any, word: int) -> int:
        sp = int(regs.sp)
        value = int.from_bytes(mem.read(sp, word), "little")
        regs.sp = sp + word
        return value

    if op1 in (0xFA, 0xFB, 0x9C, 0x9D):  # kprobe_emulate_ifmodifiers()

        def ifmod(mem: Any, regs: Any, nxt: int, word: int) -> None:
            if op1 == 0xFA:
                regs.flags = int(regs.flags) & ~X86_EFLAGS_IF
            elif op1 == 0xFB:
                regs.flags = int(regs.flags) | X86_EFLAGS_IF
            elif op1 == 0x9C:
                push(mem, regs, int(regs.flags), word)
            else:
                regs.flags = pop(mem, regs, word)
            regs.ip = nxt

        return "ifmodifiers", ifmod
    if op1 in (0xC2, 0xC3, 0xCA, 0xCB):  # kprobe_emulate_ret(): int3_emulate_ret() pops

        def ret(mem: Any, regs: Any, nxt: int, word: int) -> None:
            regs.ip = pop(mem, regs, word)

        return "ret", ret
    if op1 == 0xE8:  # kprobe_emulate_call()

        def call(mem: Any, regs: Any, nxt: int, word: int) -> None:
            push(mem, regs, nxt, word)
            regs.ip = target

        return "call", call
    if op1 in (0xEB, 0xE9):  # kprobe_emulate_jmp()

        def jmp(mem: Any, regs: Any, nxt: int, word: int) -> None:
            regs.ip = target

        return "jmp", jmp
    cc = None
    if 0x70 <= op1 <= 0x7F:
        cc = op1 & 0xF
    elif op1 == 0x0F and len(op.opcode) >= 2 and op.opcode[1] & 0xF0 == 0x80:
        cc = op.opcode[1] & 0xF
    if cc is not None:  # kprobe_emulate_jcc()
        c = cc

        def jcc(mem: Any, regs: Any, nxt: int, word: int) -> None:
            regs.ip = target if emulate_cc(int(regs.flags), c) else nxt

        return "jcc", jcc
    if 0xE0 <= op1 <= 0xE3:  # kprobe_emulate_loop(): the count register at the address size
        kind = op1 & 3
        short = 0x67 in op.prefixes  # the address size sets the count register's width

        def loop(mem: Any, regs: Any, nxt: int, word: int) -> None:
            size = word // 2 if short else word
            mask = (1 << (8 * size)) - 1
            cx = int(regs.cx)
            if kind != 3:  # LOOP*: the count before the decrement is compared with 0
                match = cx & mask != 0
                regs.cx = (cx & ~mask) | ((cx - 1) & mask)
            else:  # J*CXZ
                match = cx & mask == 0
            flags = int(regs.flags)
            if kind == 0:
                match = match and not flags & X86_EFLAGS_ZF
            elif kind == 1:
                match = match and bool(flags & X86_EFLAGS_ZF)
            regs.ip = target if match else nxt

        return "loop", loop
    if op1 == 0xFF and op.modrm is not None and (op.modrm >> 3) & 7 in (2, 4):
        field = _reg_field(insn.reg_name(insn.operands[0].reg))
        is_call = (op.modrm >> 3) & 7 == 2

        def indirect(mem: Any, regs: Any, nxt: int, word: int) -> None:
            dest = int(getattr(regs, field))
            if is_call:  # kprobe_emulate_call_indirect()
                push(mem, regs, nxt, word)
            regs.ip = dest

        return ("call_indirect" if is_call else "jmp_indirect"), indirect
    return None
