"""x86_64: SysV calls, 64-bit pt_regs, %rip-relative operands through a scratch register.

A uprobe steps its instruction in the XOL area, which lies anywhere in the address space
(typically more than 2 GiB from a PIE's data): arch/x86/kernel/uprobes.c riprel_analyze()
rewrites a %rip-relative operand as ``disp32(%scratch)``, riprel_pre_xol() saves the scratch
register and loads it with the address %rip would have had, riprel_post_xol() restores it
(after the step and on abort). Kprobes keep __copy_instruction()'s displacement rewrite (see
kuprobe.model.arch.x86).
"""

from __future__ import annotations

from typing import ClassVar

from kuprobe.model.arch.base import ArchSpecificInsn, ArchUprobeTask
from kuprobe.model.arch.x86 import (
    UPROBE_FIX_RIP_BX,
    UPROBE_FIX_RIP_DI,
    UPROBE_FIX_RIP_MASK,
    UPROBE_FIX_RIP_SI,
    X86Hooks,
)
from kuprobe.model.arch.x86_insn import EVEX, VEX2, VEX3, skip_legacy_prefixes
from kuprobe.regs import PtRegs

# arch/x86/kernel/uprobes.c: the scratch registers riprel_analyze() picks from, in its order
# (si before bx: cmpxchg8b uses bx), by their modrm number and pt_regs field (scratch_reg())
RIPREL_SCRATCH: tuple[tuple[int, int, str], ...] = (
    (6, UPROBE_FIX_RIP_SI, "si"),
    (7, UPROBE_FIX_RIP_DI, "di"),
    (3, UPROBE_FIX_RIP_BX, "bx"),
)


def riprel_rewrite(insn: bytes, disp_off: int) -> tuple[bytes, int]:
    """riprel_analyze() on raw bytes: the slot's instruction and its UPROBE_FIX_RIP_* bit.

    ``disp_off`` is where the disp32 of the %rip-relative operand starts; the modrm byte
    ("00 reg 101", never a SIB byte) is just before it and becomes "10 reg scratch": the same
    length, the same displacement, with the scratch register standing for the next insn's
    address.
    """
    ixol = bytearray(insn)
    i = skip_legacy_prefixes(insn)
    vvvv = 0xFF  # no VEX: "reg2" comes out as 0 (ax), which no choice below clashes with
    if 0x40 <= ixol[i] <= 0x4F:
        ixol[i] &= 0xFE  # REX.B off: encode si/di/bx, not r14/r15/r11
    elif ixol[i] in (VEX3, EVEX):  # in 64-bit mode these bytes always start a VEX/EVEX
        ixol[i + 1] |= 0x60  # VEX3.B (inverted) on; EVEX.X, the 4th bit of rm, likewise
        vvvv = ixol[i + 2]
    elif ixol[i] == VEX2:
        vvvv = ixol[i + 1] & 0x7F  # the decoder's fake VEX3-like byte 2
    modrm_off = disp_off - 1
    modrm = ixol[modrm_off]
    assert modrm & 0xC7 == 0x05, f"not %rip-relative: modrm {modrm:#x}"
    reg = (modrm >> 3) & 7
    reg2 = ((vvvv >> 3) & 7) ^ 7  # vex.vvvv, inverted; its 3 low bits
    num, fix = next((n, f) for n, f, _ in RIPREL_SCRATCH if n == 3 or (reg != n and reg2 != n))
    ixol[modrm_off] = 0x80 | (reg << 3) | num
    return bytes(ixol), fix


def scratch_reg(auprobe: ArchSpecificInsn) -> str:
    """arch/x86/kernel/uprobes.c: scratch_reg(): the pt_regs field the fix-up names."""
    return next(name for _, fix, name in RIPREL_SCRATCH if auprobe.fixups & fix)


class X86_64Hooks(X86Hooks):
    """SysV calls: layout.user_args (di si dx cx r8 r9), then the stack (Arch.setup_call)."""

    name: ClassVar[str] = "x86_64"
    bits: ClassVar[int] = 64
    # arch/x86/include/asm/ptrace.h: struct pt_regs (CONFIG_X86_64) -> the CPU's registers
    uc_regs: ClassVar[dict[str, str | None]] = {
        "r15": "R15", "r14": "R14", "r13": "R13", "r12": "R12", "bp": "RBP", "bx": "RBX",
        "r11": "R11", "r10": "R10", "r9": "R9", "r8": "R8", "ax": "RAX", "cx": "RCX",
        "dx": "RDX", "si": "RSI", "di": "RDI", "orig_ax": None, "ip": "RIP", "cs": "CS",
        "flags": "EFLAGS", "sp": "RSP", "ss": "SS",
    }  # fmt: skip
    # arch/x86/include/asm/elf.h: ELF_ET_DYN_BASE, 2/3 of TASK_SIZE, page aligned (what a
    # PIE gets with randomisation off)
    ELF_ET_DYN_BASE: ClassVar[int] = 0x555555554000

    # --- uprobes: %rip-relative operands (arch/x86/kernel/uprobes.c) ------------------------

    def riprel_analyze(self, auprobe: ArchSpecificInsn, disp_off: int | None) -> None:
        # riprel_analyze(): the slot gets "disp32(%scratch)"; auprobe.insn stays the original
        # (the kernel rewrites arch.insn in place, its union with ixol)
        if disp_off is None:
            return
        auprobe.slot, fix = riprel_rewrite(auprobe.insn, disp_off)
        auprobe.fixups |= fix

    def riprel_pre_xol(
        self, auprobe: ArchSpecificInsn, regs: PtRegs, autask: ArchUprobeTask, vaddr: int
    ) -> None:
        # riprel_pre_xol(): scratch = utask->vaddr + defparam.ilen, its value saved
        if auprobe.fixups & UPROBE_FIX_RIP_MASK:
            sr = scratch_reg(auprobe)
            autask.saved_scratch_register = int(getattr(regs, sr))
            setattr(regs, sr, (vaddr + auprobe.length) & self.mask)

    def riprel_post_xol(
        self, auprobe: ArchSpecificInsn, regs: PtRegs, autask: ArchUprobeTask
    ) -> None:
        # riprel_post_xol(): the scratch register back
        if auprobe.fixups & UPROBE_FIX_RIP_MASK:
            setattr(regs, scratch_reg(auprobe), autask.saved_scratch_register)
