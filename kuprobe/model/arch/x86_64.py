"""x86_64: SysV calls, 64-bit pt_regs, %rip-relative operands fixed for the slot."""

from __future__ import annotations

from typing import ClassVar

from kuprobe.model.arch.base import Memory
from kuprobe.model.arch.x86 import X86
from kuprobe.regs import signed


class X86_64(X86):
    name: ClassVar[str] = "x86_64"
    bits: ClassVar[int] = 64
    is64: ClassVar[bool] = True
    uc_mode: ClassVar[str] = "UC_MODE_64"
    # arch/x86/include/asm/ptrace.h: struct pt_regs (CONFIG_X86_64) -> the CPU's registers
    uc_regs: ClassVar[dict[str, str | None]] = {
        "r15": "R15", "r14": "R14", "r13": "R13", "r12": "R12", "bp": "RBP", "bx": "RBX",
        "r11": "R11", "r10": "R10", "r9": "R9", "r8": "R8", "ax": "RAX", "cx": "RCX",
        "dx": "RDX", "si": "RSI", "di": "RDI", "orig_ax": None, "ip": "RIP", "cs": "CS",
        "flags": "EFLAGS", "sp": "RSP", "ss": "SS",
    }  # fmt: skip
    reg_defaults: ClassVar[dict[str, int]] = {"orig_ax": (1 << 64) - 1}
    # arch/x86/include/asm/elf.h: ELF_ET_DYN_BASE, 2/3 of TASK_SIZE, page aligned (what a
    # PIE gets with randomisation off)
    ELF_ET_DYN_BASE: ClassVar[int] = 0x555555554000
    # System V AMD64 ABI: integer arguments
    ARG_REGS: ClassVar[tuple[str, ...]] = ("di", "si", "dx", "cx", "r8", "r9")

    def setup_call(
        self, mem: Memory, sp: int, args: tuple[int, ...], return_addr: int
    ) -> dict[str, int]:
        regs: dict[str, int] = {}
        stack_args = args[len(self.ARG_REGS) :]
        for name, value in zip(self.ARG_REGS, args, strict=False):
            regs[name] = value & self.mask
        # at the call instruction sp is 16-byte aligned; the call pushes 8 bytes
        sp = (sp - 8 * len(stack_args)) & ~0xF
        for i, value in enumerate(stack_args):
            mem.write(sp + 8 * i, (value & self.mask).to_bytes(8, "little"))
        sp -= 8
        mem.write(sp, return_addr.to_bytes(8, "little"))
        regs["sp"] = sp
        regs["flags"] = 0x202
        return regs

    def call_result(self, regs: dict[str, int]) -> int:
        return signed(regs["ax"], 64)
