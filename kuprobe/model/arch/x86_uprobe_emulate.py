"""x86 uprobes: the instructions emulated instead of stepped, per kernel.

That is the row uprobe_skip_sstep of kuprobe.model.semantics.

- "nop_pattern": the patch "uprobes/core: handle breakpoint and signal step exception" skips
  ``0x66* {0x90 | 0x0f 0x1f | 0x0f 0x19 | 0x87 0xc0}`` (ip += its length);
- "emulate_branches" (v3.16): arch/x86/kernel/uprobes.c branch_setup_xol_ops() /
  branch_emulate_op(): ``prefix* 0x90``, jmp rel8/rel32, call rel32, jcc rel8/rel32;
- "emulate_push" (v4.15): and push_setup_xol_ops() / push_emulate_op(): ``push reg``
  (``41 5x`` too on x86_64);
- "emulate_nops" (v6.16): and every x86_nops[] pattern of 1-8 bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kuprobe.model.arch.x86_insn import insn_opcode
from kuprobe.model.arch.x86_kprobe import emulate_cc

# arch/x86/include/asm/nops.h (x86_64 and the P6 nops): x86_nops[len], len 1..ASM_NOP_MAX
X86_NOPS = (
    b"\x90",
    b"\x66\x90",
    b"\x0f\x1f\x00",
    b"\x0f\x1f\x40\x00",
    b"\x0f\x1f\x44\x00\x00",
    b"\x66\x0f\x1f\x44\x00\x00",
    b"\x0f\x1f\x80\x00\x00\x00\x00",
    b"\x0f\x1f\x84\x00\x00\x00\x00\x00",
)
# pt_regs fields by register number (push_setup_xol_ops(): reg_offset)
PUSH_REGS = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip

# (mem, regs, vaddr, word size) -> None; regs.ip ends where the instruction goes
UprobeEmulate = Callable[[Any, Any, int, int], None]


def is_nop_pattern(insn: bytes) -> bool:
    """The seed's ``0x66* {0x90 | 0x0f 0x1f | 0x0f 0x19 | 0x87 0xc0}``."""
    i = 0
    while i < len(insn) and insn[i] == 0x66:
        i += 1
    rest = insn[i : i + 2]
    return rest[:1] == b"\x90" or rest in (b"\x0f\x1f", b"\x0f\x19", b"\x87\xc0")


def _push(mem: Any, regs: Any, value: int, word: int) -> None:
    """emulate_push_stack(): sp -= word, the value written there."""
    mask = (1 << (8 * word)) - 1
    sp = (int(regs.sp) - word) & mask
    mem.write(sp, (value & mask).to_bytes(word, "little"))
    regs.sp = sp


def uprobe_emulation(
    insn: bytes, length: int, is64: bool, rule: str
) -> tuple[str, UprobeEmulate] | None:
    """What arch_uprobe_skip_sstep() does with ``insn`` (``length`` bytes) under ``rule``, or
    None (it is stepped out of line)."""
    raw = insn[:length]

    def skip(mem: Any, regs: Any, vaddr: int, word: int) -> None:
        regs.ip = (vaddr + length) & ((1 << (8 * word)) - 1)

    if rule == "nop_pattern":
        return ("nop", skip) if is_nop_pattern(raw) else None
    if rule == "emulate_nops" and length <= len(X86_NOPS) and raw == X86_NOPS[length - 1]:
        return "nop", skip
    op = insn_opcode(raw, is64)
    op1 = op.opcode[0]
    if op1 == 0x90:  # "prefix* + nop; same as jmp with .offs = 0"
        return "nop", skip
    rel: int | None = None
    cc: int | None = None
    is_call = False
    if op1 in (0xEB, 0xE9, 0xE8):
        is_call = op1 == 0xE8
        rel = int.from_bytes(raw[-(1 if op1 == 0xEB else 4) :], "little", signed=True)
    elif 0x70 <= op1 <= 0x7F:
        rel, cc = int.from_bytes(raw[-1:], "little", signed=True), op1 & 0xF
    elif op.opcode[:1] == b"\x0f" and len(op.opcode) == 2 and op.opcode[1] & 0xF0 == 0x80:
        rel, cc = int.from_bytes(raw[-4:], "little", signed=True), op.opcode[1] & 0xF
    if rel is not None:
        offs, call, c = rel, is_call, cc

        def branch(mem: Any, regs: Any, vaddr: int, word: int) -> None:
            # branch_emulate_op(): new_ip = ip + ilen; a call pushes it; a jcc whose condition
            # fails goes on at new_ip
            mask = (1 << (8 * word)) - 1
            new_ip = (vaddr + length) & mask
            if call:
                _push(mem, regs, new_ip, word)
            elif c is not None and not emulate_cc(int(regs.flags), c):
                regs.ip = new_ip
                return
            regs.ip = (new_ip + offs) & mask

        return ("call" if is_call else "jcc" if cc is not None else "jmp"), branch
    # push_setup_xol_ops(): one byte, or "rex_prefix 0x41 (x64 only)"
    short = length == 1 or (is64 and length == 2 and raw[0] == 0x41)
    if rule in ("emulate_push", "emulate_nops") and 0x50 <= op1 <= 0x57 and short:
        field = PUSH_REGS[(op1 & 7) + (8 if length == 2 else 0)]

        def push(mem: Any, regs: Any, vaddr: int, word: int) -> None:
            _push(mem, regs, int(getattr(regs, field)), word)
            regs.ip = (vaddr + length) & ((1 << (8 * word)) - 1)

        return "push", push
    return None
