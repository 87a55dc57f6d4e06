"""x86 instruction decoding as arch/x86/lib/insn.c sees it (prefixes, VEX, opcode, modrm),
shared by the uprobe (kuprobe.model.arch.x86) and kprobe (kuprobe.model.arch.x86_kprobe) rules.
"""

from __future__ import annotations

from dataclasses import dataclass

INT3_INSN_OPCODE = 0xCC  # arch/x86/include/asm/text-patching.h
# arch/x86/lib/insn.c / inat tables: legacy prefixes skip_prefixes() walks over
LEGACY_PREFIXES = frozenset({0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67})

VEX2, VEX3, EVEX = 0xC5, 0xC4, 0x62
# the real opcodes of pop ss and mov to a segment register (arch/x86/include/asm/insn.h's
# POP_SS_OPCODE is 0x1f: see kuprobe.model.arch.x86_kprobe)
POP_SS_OPCODE, MOV_SREG_OPCODE = 0x17, 0x8E


@dataclass(frozen=True)
class InsnOpcode:
    """What arch/x86/lib/insn.c's decoder finds before the operands: the legacy prefixes,
    whether a VEX/EVEX prefix was there, the opcode bytes (a VEX-encoded instruction has one:
    the byte after the prefix, its map implied) and the modrm byte that follows."""

    prefixes: bytes
    vex: bool
    opcode: bytes
    modrm: int | None
    vex_map: int = 0  # a VEX/EVEX prefix's opcode map: 1 (0f), 2 (0f 38), 3 (0f 3a)


def insn_opcode(insn: bytes, is64: bool) -> InsnOpcode:
    """arch/x86/lib/insn.c: insn_get_prefixes() then insn_get_opcode(), on raw bytes."""
    i = 0
    while i < len(insn) and insn[i] in LEGACY_PREFIXES:
        i += 1
    prefixes = insn[:i]
    if is64 and i < len(insn) and 0x40 <= insn[i] <= 0x4F:
        i += 1  # REX
    # in 32-bit mode c4/c5/62 start a VEX/EVEX prefix only when the next byte's top bits are
    # 11 (else they are les/lds/bound with a memory operand)
    vex = 0
    if i + 1 < len(insn) and insn[i] in (VEX2, VEX3, EVEX) and (is64 or insn[i + 1] >= 0xC0):
        vex = {VEX2: 2, VEX3: 3, EVEX: 4}[insn[i]]
    vex_map = 0
    if vex:
        vex_map = 1 if vex == 2 else insn[i + 1] & 0x1F  # VEX3/EVEX: the m-mmmm bits
        i += vex
        opcode = insn[i : i + 1]
    elif insn[i : i + 1] == b"\x0f":
        three = insn[i + 1 : i + 2] in (b"\x38", b"\x3a")
        opcode = insn[i : i + (3 if three else 2)]
    else:
        opcode = insn[i : i + 1]
    i += len(opcode)
    return InsnOpcode(prefixes, bool(vex), opcode, insn[i] if i < len(insn) else None, vex_map)
