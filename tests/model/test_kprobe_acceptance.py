"""Which x86 instructions a kprobe may take: the model's verdict, as data (issue 12, item 5's
kprobe half). arch/x86/kernel/kprobes/core.c (v6.1): __copy_instruction() refuses (-EINVAL)
an int3, a forced-emulation prefix and an instruction that masks exceptions; since v5.13
prepare_emulation() refuses (-EOPNOTSUPP) what it cannot emulate: far branches, iret, VMX,
far and memory-indirect call/jmp, indirect ones with an address-size prefix. The guest
side (a test module that places these bytes in the kernel) is another helper's.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from kuprobe import ProbeError, Uprobe
from kuprobe.crosscheck.acceptance import build as acceptance_build
from kuprobe.model import Machine
from kuprobe.model.arch.x86_64 import X86_64Hooks
from kuprobe.model.arch.x86_kprobe import emulate_cc, kprobe_refuses
from kuprobe.model.semantics import for_kernel

EINVAL, EOPNOTSUPP = errno.EINVAL, errno.EOPNOTSUPP
# (hex bytes, 64-bit?, errno today, errno before v5.13 (the trap flag's kernels))
CASES = [
    ("cc", True, EINVAL, EINVAL),  # int3: another subsystem's, or padding
    ("0f0b78656e", True, EINVAL, EINVAL),  # ud2; .ascii "xen": insn_has_emulate_prefix()
    ("0f0b6b766d", True, EINVAL, EINVAL),  # ud2; .ascii "kvm"
    ("0f0b", True, 0, 0),  # a plain ud2 (BUG()) is taken
    ("8ed0", True, EINVAL, EINVAL),  # mov %eax,%ss: insn_masking_exception()
    ("8ed8", True, 0, 0),  # mov %eax,%ds: not ss
    ("1f", False, EINVAL, EINVAL),  # pop %ds: the kernel's POP_SS_OPCODE is 0x1f
    ("17", False, 0, 0),  # pop %ss itself (0x17) passes that check
    ("9a000000001000", False, EOPNOTSUPP, 0),  # lcall $0x10,$0: far call absolute
    ("ea000000001000", False, EOPNOTSUPP, 0),  # ljmp: far jmp absolute
    ("cf", True, EOPNOTSUPP, 0),  # iret
    ("0f01c1", True, EOPNOTSUPP, 0),  # vmcall: 0f 01 /0, mod 3
    ("0f01c8", True, 0, 0),  # monitor: 0f 01 /1
    ("0f01d0", True, 0, 0),  # xgetbv: 0f 01 /2
    ("ff18", True, EOPNOTSUPP, 0),  # lcall *(%rax): ff /3
    ("ff28", True, EOPNOTSUPP, 0),  # ljmp *(%rax): ff /5
    ("ff10", True, EOPNOTSUPP, 0),  # call *(%rax): through memory
    ("ff24c500000000", True, EOPNOTSUPP, 0),  # jmp *0x0(,%rax,8): a jump table
    ("ff2500000000", True, EOPNOTSUPP, 0),  # jmp *0x0(%rip)
    ("67ffd0", True, EOPNOTSUPP, 0),  # call *%eax with an address-size prefix
    ("ffd0", True, 0, 0),  # call *%rax: emulated
    ("41ffe3", True, 0, 0),  # jmp *%r11: emulated
    ("ffd0", False, 0, 0),  # call *%eax (32-bit)
    ("e800000000", True, 0, 0),  # call rel32: emulated
    ("c3", True, 0, 0),  # ret: emulated
    ("c20800", True, 0, 0),  # ret $8: emulated
    ("fa", True, 0, 0),  # cli: emulated (IF modifier)
    ("9c", True, 0, 0),  # pushf: emulated
    ("e2fe", True, 0, 0),  # loop: emulated
    ("f00107", True, 0, 0),  # lock add %eax,(%rdi): kprobes take lock prefixes
    ("55", True, 0, 0),  # push %rbp
    ("0f1f440000", True, 0, 0),  # nopl
    ("c5f877", True, 0, 0),  # vzeroupper (VEX)
]


@pytest.mark.parametrize(("code", "is64", "today", "before"), CASES,
                         ids=[f"{c[0]}-{64 if c[1] else 32}" for c in CASES])  # fmt: skip
def test_kprobe_refusals(code: str, is64: bool, today: int, before: int) -> None:
    insn = bytes.fromhex(code)
    for int3_step, want in ((True, today), (False, before)):
        refusal = kprobe_refuses(insn, is64, int3_step=int3_step)
        got = refusal.errno if refusal is not None else 0
        assert got == want, (code, int3_step, refusal)
        if refusal is not None:
            assert refusal.function in ("__copy_instruction", "prepare_emulation")


# arch/x86/include/asm/processor-flags.h
CF, PF, ZF, SF, OF = 0x1, 0x4, 0x40, 0x80, 0x800


@pytest.mark.parametrize(
    ("cc", "flags", "taken"),
    [
        (0x4, ZF, True), (0x5, ZF, False),  # je / jne
        (0x2, CF, True), (0x3, CF, False),  # jb / jae
        (0x6, ZF, True), (0x7, 0, True),  # jbe / ja
        (0x8, SF, True), (0xA, PF, True),  # js / jp
        (0xC, SF, True), (0xC, SF | OF, False),  # jl: SF != OF
        (0xE, ZF, True), (0xF, SF | OF, True),  # jle / jg
        (0x0, OF, True), (0x1, OF, False),  # jo / jno
    ],
)  # fmt: skip
def test_emulated_jcc_conditions(cc: int, flags: int, taken: bool) -> None:
    """__emulate_cc() (arch/x86/include/asm/text-patching.h), as kprobe_emulate_jcc() and the
    uprobes' check_jmp_cond() use it."""
    assert emulate_cc(flags, cc) == taken


def test_a_rip_relative_kernel_insn_reaches_its_slot() -> None:
    """__copy_instruction(): the new displacement is computed in 64-bit pointer arithmetic, so
    kernel text at 0xffffffff81000000 reaching kernel data is rewritten for a slot near 0."""
    addr, slot = 0xFFFFFFFF81000000, 0x20000
    code = bytes.fromhex("488b0500100000c3")  # mov 0x1000(%rip),%rax; ret
    ainsn = X86_64Hooks().arch_prepare_kprobe(addr, code, slot)
    disp = int.from_bytes(ainsn.slot[3:7], "little", signed=True)
    assert (slot + 7 + disp) % (1 << 64) == addr + 7 + 0x1000  # the same target


@pytest.mark.parametrize(
    ("code", "errno_"),
    [
        ("c4e2799ac0", errno.EOPNOTSUPP),  # vfmsub132ps: opcode byte 9a, as a far call
        ("c4e279cfc0", errno.EOPNOTSUPP),  # vgf2p8mulb: cf, as iret
        ("c5f9eac0", errno.EOPNOTSUPP),  # vpminsw: ea, as a far jmp
        ("62f27d48ccc0", errno.EINVAL),  # vrsqrt28ps: cc, as an int3
        ("c4e37968c001", errno.EINVAL),  # vfmaddps (AMD FMA4): not in the decoder's map
        ("660f38c800", errno.EINVAL),  # sha1nexte with 66: that form is EVEX-only
        ("c5f9efc0", 0),  # vpxor
        ("62f27d4898c0", 0),  # vfmadd132ps zmm
    ],
)
def test_vex_instructions_are_refused_by_their_opcode_byte(code: str, errno_: int) -> None:
    """The kernel reads insn->opcode.bytes[0] for VEX and EVEX forms too (measured on the
    x86_64 guest's 6.1: tests/vm/test_crosscheck_kprobes.py)."""
    refusal = kprobe_refuses(bytes.fromhex(code), True)
    assert (refusal.errno if refusal else 0) == errno_


def test_the_sha512_vex_forms_by_kernel() -> None:
    """f2 0f 38 cc: a legacy instruction to 6.1's decoder, VEX-only (so refused) since 6.10's
    ("x86/insn: Add misc new Intel instructions")."""
    code = bytes.fromhex("f20f38cc00")
    assert kprobe_refuses(code, True, sha512_vex=False) is None
    refusal = kprobe_refuses(code, True, sha512_vex=True)
    assert refusal is not None and refusal.errno == errno.EINVAL
    assert for_kernel("6.1").x86_sha512_vex == "unknown"
    assert for_kernel("6.9.12").x86_sha512_vex == "unknown"
    assert for_kernel("6.10.0").x86_sha512_vex == "vex_only"
    assert for_kernel("6.18.44").x86_sha512_vex == "vex_only"


@pytest.mark.parametrize(("release", "refused"), [("6.1.0", False), ("6.18.0", True)])
def test_a_uprobe_is_analysed_with_the_machines_kernel_rules(
    tmp_path: Path, release: str, refused: bool
) -> None:
    """arch_uprobe_analyze_insn() is the kernel's: on a Machine of 6.1 the legacy form of a
    VEX-only SHA512 opcode (f2 0f 38 cb) takes a uprobe, on one of 6.18 it does not (ENOEXEC).
    The registry analysed every uprobe with today's rules whatever the Machine's, and the 6.1
    guest's kernel accepted what the model refused (found by the host's tests in the guest)."""
    insns = [(bytes.fromhex("f20f38cb00"), "sha256rnds2 xmm0, [rax], xmm0")]
    exe = acceptance_build("x86_64", insns, tmp_path)
    m = Machine.load(str(exe), semantics=release)
    up = Uprobe(str(exe), symbol_name="insn_0")
    if refused:
        with pytest.raises(ProbeError) as e:
            m.register_uprobe(up)
        assert e.value.errno == errno.ENOEXEC
    else:
        m.register_uprobe(up)
        m.unregister_uprobe(up)
