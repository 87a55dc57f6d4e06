"""An independent instruction counter: a bare Unicorn with a code hook, no model code.

The every-instruction tests compare the model's probe hit counts with this.
"""

from __future__ import annotations

from collections import Counter

import unicorn
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from unicorn import arm64_const, x86_const

RET = 0x10000
STACK_TOP = 0x7FF00000
# per arch: Unicorn arch and mode, sp/result registers, word size, argument registers
# (SysV x86_64; cdecl i386 passes everything on the stack; AAPCS64 x0..x7), and the link
# register (arm64: the return address goes there, not on the stack)
_ABI = {
    "x86_64": (unicorn.UC_ARCH_X86, unicorn.UC_MODE_64, x86_const.UC_X86_REG_RSP,
               x86_const.UC_X86_REG_RAX, 8,
               (x86_const.UC_X86_REG_RDI, x86_const.UC_X86_REG_RSI), None),
    "i386": (unicorn.UC_ARCH_X86, unicorn.UC_MODE_32, x86_const.UC_X86_REG_ESP,
             x86_const.UC_X86_REG_EAX, 4, (), None),
    "arm64": (unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM, arm64_const.UC_ARM64_REG_SP,
              arm64_const.UC_ARM64_REG_X0, 8,
              tuple(getattr(arm64_const, f"UC_ARM64_REG_X{i}") for i in range(8)),
              arm64_const.UC_ARM64_REG_X30),
}  # fmt: skip


def count_insns(path: str, arch: str, func: str, *args: int) -> tuple[int, Counter[int]]:
    """Run ``func(*args)``; returns (result, how often each address executed)."""
    uc_arch, mode, sp_reg, ax_reg, word, arg_regs, lr_reg = _ABI[arch]
    uc = unicorn.Uc(uc_arch, mode)  # type: ignore[attr-defined]
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        pages: set[int] = set()
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        for s in loads:
            start = s["p_vaddr"] & ~0xFFF
            pages.update(range(start, s["p_vaddr"] + s["p_memsz"], 0x1000))
        for p in sorted(pages):
            uc.mem_map(p, 0x1000)
        for s in loads:
            uc.mem_write(s["p_vaddr"], s.data())
        symtab = elf.get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection), f"{path}: no .symtab"
        found = symtab.get_symbol_by_name(func)
        assert found, f"{path}: no symbol {func}"
        sym = found[0]
        entry = sym["st_value"]
    uc.mem_map(RET, 0x1000)
    uc.mem_map(STACK_TOP - 0x100000, 0x100000)
    sp = STACK_TOP - 0x4000
    stack_args = args[len(arg_regs) :]
    for reg, value in zip(arg_regs, args, strict=False):
        uc.reg_write(reg, value & ((1 << 64) - 1))
    sp = (sp - word * len(stack_args)) & ~0xF
    for i, value in enumerate(stack_args):
        uc.mem_write(sp + word * i, (value & ((1 << (8 * word)) - 1)).to_bytes(word, "little"))
    if lr_reg is not None:
        uc.reg_write(lr_reg, RET)
    else:
        sp -= word
        uc.mem_write(sp, RET.to_bytes(word, "little"))
    uc.reg_write(sp_reg, sp)
    seen: Counter[int] = Counter()

    def hook(_uc: object, address: int, _size: int, _user: object) -> None:
        seen[address] += 1

    uc.hook_add(unicorn.UC_HOOK_CODE, hook)
    uc.emu_start(entry, RET, count=10_000_000)
    result = uc.reg_read(ax_reg)
    bits = 8 * word
    result &= (1 << bits) - 1
    if result >> (bits - 1):
        result -= 1 << bits
    return result, seen
