"""The model's uprobe acceptance rules for x86 (arch/x86/kernel/uprobes.c, v6.18), one example
of each: uprobe_init_insn()'s bad prefixes, exception-masking instructions and good_insns
tables (with 0x0f good, so every two-byte opcode), VEX/EVEX opcodes tested against the one-byte
table, and branch_setup_xol_ops()'s 0x66 rule. tests/live/test_insn_acceptance.py measures the
same against the live kernel over the whole opcode map."""

from __future__ import annotations

import pytest

from kuprobe.model.arch.x86 import insn_opcode, insn_undecoded, uprobe_refuses

CASES = [
    # (hex, x86_64 refuses, i386 refuses)
    ("01c0", False, False),  # add
    ("f00100", True, True),  # lock add
    ("2e0100", True, True),  # cs:
    ("640100", False, False),  # fs: is fine
    ("662e0f1f840000000000", True, True),  # the cs nopw padding
    ("fa", True, True),  # cli
    ("fb", True, True),  # sti
    ("8ed0", True, True),  # mov %eax, %ss
    ("8ed8", False, False),  # mov %eax, %ds
    ("17", True, True),  # pop ss (invalid in 64-bit mode too)
    ("07", True, True),  # pop es
    ("06", True, False),  # push es: invalid in 64-bit mode
    ("cc", True, True),  # int3
    ("cd80", True, True),  # int $0x80
    ("f4", True, True),  # hlt
    ("0f05", False, False),  # syscall: 0x0f is in good_insns
    ("0f0b", False, False),  # ud2
    ("0f31", False, False),  # rdtsc
    ("9a000000000000", True, False),  # far call: only 32-bit
    ("66eb00", True, True),  # jmp with 0x66
    ("eb00", False, False),
    ("f3eb00", False, False),  # rep jmp: only 0x66 is refused
    ("660f8400000000", True, True),  # jcc rel32 with 0x66
    ("c5f858c0", False, False),  # vaddps: opcode 58
    ("c5f9efc0", True, True),  # vpxor: opcode ef, not in good_insns
    ("c4e2f9f7c0", False, False),  # shlx: 0f38 f7 -> f7
    ("62f1fd486fc0", True, True),  # EVEX vmovdqa64: 6f
]


@pytest.mark.parametrize(("code", "refuse64", "refuse32"), CASES)
def test_acceptance_rules(code: str, refuse64: bool, refuse32: bool) -> None:
    raw = bytes.fromhex(code)
    assert (uprobe_refuses(raw, True) is not None) == refuse64
    assert (uprobe_refuses(raw, False) is not None) == refuse32


def test_c4_c5_in_32_bit_mode_are_les_lds_with_a_memory_operand() -> None:
    assert not insn_opcode(bytes.fromhex("c50600"), is64=False).vex  # lds (%esi), %eax
    assert insn_opcode(bytes.fromhex("c5f858c0"), is64=False).vex
    assert insn_opcode(bytes.fromhex("c50600"), is64=True).vex


@pytest.mark.parametrize(
    ("code", "undecoded"),
    [
        ("c4e37968c001", True),  # vfmaddps (AMD FMA4): not in the kernel's opcode map
        ("c4e3790fc001", False),  # vpalignr
        ("0f38c800", False),  # sha1nexte
        ("660f38c800", True),  # its 0x66 form is EVEX-only in the map
        ("f20f38cc00", True),  # f2 0f 38 cc: VEX-only (vsha512msg1)
        ("f20f38c800", False),
        ("660f38dc00", False),  # aesenc
    ],
)
def test_what_the_kernels_decoder_does_not_know(code: str, undecoded: bool) -> None:
    for is64 in (True, False):
        assert insn_undecoded(bytes.fromhex(code), is64) == undecoded
