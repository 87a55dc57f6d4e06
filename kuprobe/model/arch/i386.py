"""i386: cdecl calls, 32-bit pt_regs (bx … ss); the path of the patch "Kprobes- robust fault
handling for i386" (int3, TF/IF in eflags)."""

from __future__ import annotations

from typing import ClassVar

from kuprobe.model.arch.base import Memory
from kuprobe.model.arch.x86 import X86
from kuprobe.regs import signed


class I386(X86):
    name: ClassVar[str] = "i386"
    bits: ClassVar[int] = 32
    is64: ClassVar[bool] = False
    # arch/x86/include/asm/ptrace.h: struct pt_regs (CONFIG_X86_32) -> the CPU's registers
    uc_regs: ClassVar[dict[str, str | None]] = {
        "bx": "EBX", "cx": "ECX", "dx": "EDX", "si": "ESI", "di": "EDI", "bp": "EBP",
        "ax": "EAX", "ds": "DS", "es": "ES", "fs": "FS", "gs": "GS", "orig_ax": None,
        "ip": "EIP", "cs": "CS", "flags": "EFLAGS", "sp": "ESP", "ss": "SS",
    }  # fmt: skip
    reg_defaults: ClassVar[dict[str, int]] = {"orig_ax": (1 << 32) - 1}
    # arch/x86/include/asm/elf.h: ELF_ET_DYN_BASE for a 32-bit task (randomisation off)
    ELF_ET_DYN_BASE: ClassVar[int] = 0x56555000

    def setup_call(
        self, mem: Memory, sp: int, args: tuple[int, ...], return_addr: int
    ) -> dict[str, int]:
        # cdecl: arguments on the stack right to left, then the return address
        sp = (sp - 4 * len(args)) & ~0xF
        for i, value in enumerate(args):
            mem.write(sp + 4 * i, (value & self.mask).to_bytes(4, "little"))
        sp -= 4
        mem.write(sp, return_addr.to_bytes(4, "little"))
        return {"sp": sp, "flags": 0x202}

    def call_result(self, regs: dict[str, int]) -> int:
        return signed(regs["ax"], 32)
