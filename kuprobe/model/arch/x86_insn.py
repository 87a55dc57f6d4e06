"""x86 instruction decoding as arch/x86/lib/insn.c sees it: prefixes, VEX, opcode, modrm.

It is shared by the uprobe (kuprobe.model.arch.x86) and kprobe (kuprobe.model.arch.x86_kprobe)
rules.
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


def skip_legacy_prefixes(insn: bytes) -> int:
    """Index of the first byte of ``insn`` that is no legacy prefix (insn_get_prefixes())."""
    i = 0
    while i < len(insn) and insn[i] in LEGACY_PREFIXES:
        i += 1
    return i


def skip_prefixes(insn: bytes, is64: bool) -> int:
    """arch/x86/kernel/kprobes/core.c: skip_prefixes(): index of the opcode byte (or of a
    VEX/EVEX prefix): the legacy prefixes, then a REX prefix in 64-bit mode."""
    i = skip_legacy_prefixes(insn)
    if is64 and i < len(insn) and 0x40 <= insn[i] <= 0x4F:
        i += 1
    return i


def insn_opcode(insn: bytes, is64: bool) -> InsnOpcode:
    """arch/x86/lib/insn.c: insn_get_prefixes() then insn_get_opcode(), on raw bytes."""
    prefixes = insn[: skip_legacy_prefixes(insn)]
    i = skip_prefixes(insn, is64)
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


# Encodings capstone decodes that arch/x86/lib/insn.c does not (insn_decode() fails:
# arch_uprobe_analyze_insn() returns -ENOEXEC, __copy_instruction() 0 so a kprobe -EINVAL),
# from its opcode map (x86-opcode-map.txt): AMD's FMA4 and vpermil2ps/pd (VEX map 0f3a) are
# not in it (insn_get_opcode(): !inat_accept_vex()); in the 0f 38 map, c8 and ca-cd with a
# 0x66 prefix are EVEX-only forms ("(66),(ev)": vexp2ps, vrcp28ps …), so their legacy
# encodings are refused (inat_must_vex()); and, in the maps of v6.10 on (the x86_sha512_vex row
# of kuprobe.model.semantics), cb-cd with 0xf2 are VEX-only ones ("(F2),(v)": vsha512*).
# Measured over every 0f, 0f 38 and 0f 3a opcode, bare and with 66/f2/f3, and VEX maps 1-3
# and EVEX maps 1-2 (kuprobe.crosscheck.acceptance): as uprobes on 6.18, as kprobes on 6.1.
UNDECODED_VEX_0F3A = frozenset(
    {0x48, 0x49, *range(0x5C, 0x60), *range(0x68, 0x70), *range(0x78, 0x80)}
)
UNDECODED_0F38 = {0x66: frozenset({0xC8, 0xCA, 0xCB, 0xCC, 0xCD})}
UNDECODED_0F38_SHA512_VEX = {0xF2: frozenset({0xCB, 0xCC, 0xCD})}


def insn_undecoded(insn: bytes, is64: bool, *, sha512_vex: bool = True) -> bool:
    """Whether the kernel's instruction decoder fails on ``insn`` where capstone does not.
    ``sha512_vex``: the map knows the VEX-only SHA512 forms (the x86_sha512_vex row)."""
    op = insn_opcode(insn, is64)
    if op.vex:
        return op.vex_map == 3 and op.opcode[0] in UNDECODED_VEX_0F3A
    if op.opcode[:2] != b"\x0f\x38" or len(op.opcode) < 3 or not op.prefixes:
        return False
    # the attribute is looked up for the last 66/f2/f3 prefix (insn_last_prefix_id())
    last = next((p for p in reversed(op.prefixes) if p in (0x66, 0xF2, 0xF3)), None)
    if last is None:
        return False
    refused = UNDECODED_0F38.get(last, frozenset())
    if sha512_vex:
        refused |= UNDECODED_0F38_SHA512_VEX.get(last, frozenset())
    return op.opcode[2] in refused
