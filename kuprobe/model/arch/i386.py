"""i386's hooks: cdecl calls, 32-bit pt_regs (bx … ss), int3 and TF/IF in eflags.

The path of the patch "Kprobes- robust fault handling for i386"."""

from __future__ import annotations

from typing import ClassVar

from kuprobe.model.arch.x86 import X86Hooks


class I386Hooks(X86Hooks):
    """cdecl (layout.user_args is empty): every argument on the stack, right to left, under
    the return address the call pushes (X86Hooks.call_return_address)."""

    name: ClassVar[str] = "i386"
    bits: ClassVar[int] = 32
    # arch/x86/include/asm/ptrace.h: struct pt_regs (CONFIG_X86_32) -> the CPU's registers
    uc_regs: ClassVar[dict[str, str | None]] = {
        "bx": "EBX", "cx": "ECX", "dx": "EDX", "si": "ESI", "di": "EDI", "bp": "EBP",
        "ax": "EAX", "ds": "DS", "es": "ES", "fs": "FS", "gs": "GS", "orig_ax": None,
        "ip": "EIP", "cs": "CS", "flags": "EFLAGS", "sp": "ESP", "ss": "SS",
    }  # fmt: skip
    # arch/x86/include/asm/elf.h: ELF_ET_DYN_BASE for a 32-bit task (randomisation off)
    ELF_ET_DYN_BASE: ClassVar[int] = 0x56555000
