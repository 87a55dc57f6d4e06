"""What x86_64 and i386 share: int3, the trap flag, resume_execution, the uprobe xol ops.

Sources: arch/x86/kernel/kprobes/core.c (arch_prepare_kprobe, __copy_instruction,
setup_singlestep, resume_execution, kprobe_fault_handler, arch_prepare_kretprobe) and
arch/x86/kernel/uprobes.c (arch_uprobe_analyze_insn, arch_uprobe_pre_xol/post_xol,
arch_uprobe_abort_xol, arch_uretprobe_hijack_return_addr); the NOP pattern skipped instead of
single-stepped is from the patch "uprobes/core: handle breakpoint and signal step exception".
The %rip-relative scratch-register scheme of uprobes (riprel_analyze/pre_xol/post_xol) is
x86_64's (kuprobe.model.arch.x86_64); here its 32-bit stubs.
"""

from __future__ import annotations

import errno
import signal
from typing import Any, ClassVar

import capstone

from kuprobe.errors import ProbeError
from kuprobe.insn import disassembler
from kuprobe.model.arch.base import (
    RP_CHECK_CALL,
    Arch,
    ArchSpecificInsn,
    ArchUprobe,
    ArchUprobeTask,
    Current,
    Memory,
    refuse_insn,
)
from kuprobe.model.arch.x86_insn import (
    EVEX,
    INT3_INSN_OPCODE,
    LEGACY_PREFIXES,
    MOV_SREG_OPCODE,
    POP_SS_OPCODE,
    VEX2,
    VEX3,
    InsnOpcode,
    insn_opcode,
    insn_undecoded,
    skip_prefixes,
)
from kuprobe.model.arch.x86_kprobe import X86_EFLAGS_IF, kprobe_refuses, prepare_emulation
from kuprobe.model.arch.x86_uprobe_emulate import uprobe_emulation
from kuprobe.regs import PtRegs

__all__ = [
    "EVEX",
    "INT3_INSN_OPCODE",
    "LEGACY_PREFIXES",
    "MOV_SREG_OPCODE",
    "POP_SS_OPCODE",
    "VEX2",
    "VEX3",
    "InsnOpcode",
    "X86Hooks",
    "insn_opcode",
    "insn_undecoded",
    "skip_prefixes",
    "uprobe_refuses",
]  # fmt: skip

# arch/x86/include/asm/processor-flags.h (X86_EFLAGS_IF: with the others, in x86_kprobe.py)
X86_EFLAGS_TF = 0x100
# arch/x86/kernel/uprobes.c: UPROBE_TRAP_NR (trap_nr while an xol step is in flight)
UPROBE_TRAP_NR = 0xFFFFFFFF
# arch/x86/kernel/uprobes.c: the fix-ups post_xol applies (resume_execution() uses the same)
UPROBE_FIX_IP = 0x01  # the new ip is relative to the slot: make it relative to the original
UPROBE_FIX_CALL = 0x02  # a call pushed the slot's return address: make it the original's
# ... and which scratch register replaces %rip in the slot (riprel_analyze(), x86_64 only)
UPROBE_FIX_RIP_SI = 0x08
UPROBE_FIX_RIP_DI = 0x10
UPROBE_FIX_RIP_BX = 0x20
UPROBE_FIX_RIP_MASK = UPROBE_FIX_RIP_SI | UPROBE_FIX_RIP_DI | UPROBE_FIX_RIP_BX


def _table(rows: str) -> frozenset[int]:
    """A good-instruction bitmap written as the kernel writes it: 16 rows of 16 bits, row
    0x00 first, a bit set where the opcode is good."""
    bits = "".join(rows.split())
    assert len(bits) == 256
    return frozenset(i for i, b in enumerate(bits) if b == "1")


# arch/x86/kernel/uprobes.c (v6.18): good_insns_32, good_insns_64 and good_2byte_insns, the
# opcodes uprobe_init_insn() accepts. The one-byte tables mark 0x0f good in both modes, so
# uprobe_init_insn() accepts every two- and three-byte opcode on the first test
# (test_bit(OPCODE1) returns before good_2byte_insns is read): syscall, ud2, rdtsc, rdmsr …
# may all carry a uprobe; good_2byte_insns is kept as the kernel's data, never consulted there.
GOOD_INSNS_32 = _table("""
    1111111011111111 1111111011111110 1111111111111111 1111111111111111
    1111111111111111 1111111111111111 1111111111110000 1111111111111111
    1111111111111111 1111111111111111 1111111111111111 1111111111111111
    1111111111110000 1111111111111111 1111000011110000 1011011111001111
""")
GOOD_INSNS_64 = _table("""
    1111110011111101 1111110011111100 1111111011111110 1111111011111110
    1111111111111111 1111111111111111 0001111111110000 1111111111111111
    1101111111111111 1111111111011111 1111111111111111 1111111111111111
    1111111111110000 1111000111111111 1111000011010000 1011011111001111
""")
GOOD_2BYTE_INSNS = _table("""
    0011100000101111 1111111111111111 1111111111111111 0111001011111111
    1111111111111111 1111111111111111 1111111111111111 1111111100111111
    1111111111111111 1111111111111111 1111111111111101 1111111111111111
    1111111111111111 1111111111111111 1111111111111111 1111111111111111
""")
# is_prefix_bad(): es, cs, ss, ds segment overrides and lock refuse the instruction
BAD_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0xF0})
# branch_setup_xol_ops(): the branches it emulates (jmp rel8/rel32, call rel32, jcc)
BRANCH_OPCODES = frozenset({0xEB, 0xE9, 0xE8, *range(0x70, 0x80)})


def uprobe_refuses(insn: bytes, is64: bool) -> str | None:
    """Why arch/x86/kernel/uprobes.c (v6.18) refuses a uprobe on ``insn`` (-ENOTSUPP), or None.

    uprobe_init_insn(): a bad prefix (is_prefix_bad()); an instruction that masks exceptions
    for the next one (insn_masking_exception(): pop ss, mov to ss); an opcode not in
    good_insns_64/32, or a two-byte one not in good_2byte_insns. Then branch_setup_xol_ops():
    a branch it emulates with a 0x66 prefix.
    """
    op = insn_opcode(insn, is64)
    if any(p in BAD_PREFIXES for p in op.prefixes):
        return "a lock or es/cs/ss/ds prefix"
    op1 = op.opcode[0]
    modrm_reg = (op.modrm >> 3) & 7 if op.modrm is not None else None
    if op1 == POP_SS_OPCODE or (op1 == MOV_SREG_OPCODE and modrm_reg == 2):
        return "it masks exceptions for the next instruction (pop ss, mov to ss)"
    good = op1 in (GOOD_INSNS_64 if is64 else GOOD_INSNS_32)
    if not good and len(op.opcode) == 2:
        good = op.opcode[1] in GOOD_2BYTE_INSNS
    if not good:
        return "its opcode is not in the kernel's good_insns table"
    branch = op1 in BRANCH_OPCODES
    if op1 == 0x0F and len(op.opcode) == 2 and 0x80 <= op.opcode[1] <= 0x8F:
        branch = True
    if branch and 0x66 in op.prefixes:
        return "a branch with a 0x66 (16-bit) prefix"
    return None


class X86Hooks(Arch):
    """The x86 hooks; x86_64 and i386 differ in registers, ABI and RIP-relative operands."""

    uc_arch: ClassVar[str] = "X86"
    BREAKPOINT_TRAP: ClassVar[int] = 3  # #BP
    DEBUG_TRAP: ClassVar[int] = 1  # #DB
    PAGE_FAULT_TRAPNR: ClassVar[int] = 14  # X86_TRAP_PF
    # arch/x86/include/asm/kprobes.h, arch/x86/include/asm/uprobes.h
    BREAKPOINT_INSN: ClassVar[bytes] = bytes([INT3_INSN_OPCODE])
    # __kretprobe_trampoline saves pt_regs and calls trampoline_handler() directly; the model
    # enters it through an int3 that no kprobe owns
    KRETPROBE_TRAMPOLINE_INSN: ClassVar[bytes] = bytes([INT3_INSN_OPCODE])
    NOP_INSN: ClassVar[bytes] = b"\x90"
    UPROBE_SWBP_INSN: ClassVar[bytes] = bytes([INT3_INSN_OPCODE])
    MAX_INSN_SIZE: ClassVar[int] = 16
    MAX_UINSN_BYTES: ClassVar[int] = 16
    UPROBE_XOL_SLOT_BYTES: ClassVar[int] = 128

    @property
    def is64(self) -> bool:
        """Long mode: the decoder's REX prefixes, %rip-relative operands, 64-bit tables."""
        return self.bits == 64

    @property
    def reg_defaults(self) -> dict[str, int]:
        # orig_ax is no CPU register: -1 (no syscall), as the kernel's entry code leaves it
        return {"orig_ax": self.mask}

    def trap_signal(self, trapnr: int) -> int:
        # arch/x86/kernel/traps.c: #DE -> SIGFPE, #UD -> SIGILL, #GP/#PF -> SIGSEGV
        return int({0: signal.SIGFPE, 6: signal.SIGILL, 13: signal.SIGSEGV}.get(
            trapnr, signal.SIGSEGV))  # fmt: skip

    def call_return_address(self, mem: Memory, sp: int, return_addr: int) -> dict[str, int]:
        # call pushes the return address; IF set (0x202: IF and the always-one bit 1)
        sp -= self.word
        mem.write(sp, return_addr.to_bytes(self.word, "little"))
        return {"sp": sp, "flags": 0x202}

    # --- decoding -------------------------------------------------------------------------

    def decode(self, code: bytes, addr: int) -> Any:
        cs = disassembler(self.name)
        cs.detail = True
        for insn in cs.disasm(code, addr, 1):
            return insn
        raise ProbeError(errno.EILSEQ, f"cannot decode the instruction at {addr:#x}")

    @staticmethod
    def _shown(insn: Any) -> str:
        """A decoded instruction as an error names it: mnemonic and operands."""
        return f"{insn.mnemonic} {insn.op_str}".strip()

    def _rip_disp(self, insn: Any) -> int | None:
        """Offset of the displacement of a %rip-relative operand, if any (x86_64 only)."""
        if not self.is64:
            return None
        for op in insn.operands:
            if op.type == capstone.x86.X86_OP_MEM and op.mem.base == capstone.x86.X86_REG_RIP:
                return int(insn.disp_offset)
        return None

    def _fixups(self, insn: bytes) -> int:
        """Which fix-ups a step out of line needs: resume_execution()'s opcode switch."""
        i = skip_prefixes(insn, self.is64)
        op = insn[i]
        if op in (0xC2, 0xC3, 0xCA, 0xCB, 0xCF, 0xEA):  # ret/lret/iret/jmp abs: ip correct
            return 0
        if op == 0xE8:  # call relative: fix return address and ip
            return UPROBE_FIX_IP | UPROBE_FIX_CALL
        if op == 0x9A and not self.is64:  # call absolute: fix return address only
            return UPROBE_FIX_CALL
        if op == 0xFF and i + 1 < len(insn):
            modrm = insn[i + 1]
            if modrm & 0x30 == 0x10:  # call absolute, indirect: fix return address only
                return UPROBE_FIX_CALL
            if modrm & 0x31 in (0x20, 0x21):  # jmp near/far, absolute indirect: ip correct
                return 0
        return UPROBE_FIX_IP

    def _relocate(self, insn: bytes, disp_off: int | None, src: int, dest: int) -> bytes:
        """__copy_instruction(): a %rip-relative displacement adjusted for the new place.

        Kprobes only: the kernel's insn slots lie within +-2 GiB of its text, so this fits
        there; uprobes use a scratch register instead (riprel_analyze(), x86_64).
        """
        if disp_off is None:
            return insn
        disp = int.from_bytes(insn[disp_off : disp_off + 4], "little", signed=True)
        # "(u8 *) src + (s64) insn->displacement.value - (u8 *) real" in 64-bit pointer
        # arithmetic: kernel text at 0xffffffff8xxxxxxx reaches a slot near 0 by wrapping
        half = 1 << (self.bits - 1)
        newdisp = (src + disp - dest + half) % (1 << self.bits) - half
        if not -(1 << 31) <= newdisp < (1 << 31):
            raise ProbeError(errno.EINVAL, "new displacement does not fit into s32")
        return insn[:disp_off] + newdisp.to_bytes(4, "little", signed=True) + insn[disp_off + 4 :]

    # --- kprobes ----------------------------------------------------------------------------

    def set_user_fault(self, thread: Any) -> None:
        # arch/x86/mm/fault.c: do_user_addr_fault() -> tsk->thread.trap_nr = X86_TRAP_PF
        thread.trap_nr = self.PAGE_FAULT_TRAPNR

    def arch_uretprobe_is_alive(self, stack: int, ctx: str, regs: PtRegs) -> bool:
        # arch/x86/kernel/uprobes.c: at a call sp was just decremented by the call insn
        sp = int(regs.sp)
        return sp < stack if ctx == RP_CHECK_CALL else sp <= stack

    def kprobe_trap_addr(self, regs: PtRegs) -> int:
        # kprobe_int3_handler(): addr = regs->ip - sizeof(kprobe_opcode_t)
        return (int(regs.ip) - 1) & self.mask

    def sha512_vex(self) -> bool:
        """The row x86_sha512_vex: the decoder's map has the VEX-only SHA512 forms."""
        return self.semantics.x86_sha512_vex == "vex_only"

    def int3_step(self) -> bool:
        """The row x86_kprobe_step (kuprobe.model.semantics): an int3 after the slot ends the
        step (v5.13 on), else the trap flag (the seed's)."""
        return self.semantics.x86_kprobe_step == "int3_after_slot"

    def arch_prepare_kprobe(
        self, addr: int, code: bytes, slot: int, before: bytes = b""
    ) -> ArchSpecificInsn:
        # arch_copy_kprobe(): __copy_instruction() (-EINVAL), prepare_emulation() (-EOPNOTSUPP),
        # prepare_singlestep(): the slot gets the instruction and (v5.13 on) an int3
        insn = self.decode(code, addr)
        raw = bytes(insn.bytes)
        refusal = kprobe_refuses(
            code, self.is64, int3_step=self.int3_step(), sha512_vex=self.sha512_vex()
        )
        if refusal is not None:
            raise refuse_insn(
                refusal.errno,
                f"{self.name}: kprobes refuse {self._shown(insn)} at {addr:#x}: {refusal.why}"
                f" ({refusal.function}())",
            )
        slot_bytes = self._relocate(raw, self._rip_disp(insn), addr, slot)
        i = skip_prefixes(raw, self.is64)
        ainsn = ArchSpecificInsn(
            insn=raw,
            length=len(raw),
            slot=slot_bytes,
            fixups=self._fixups(raw),
            # is_IF_modifier(): cli, sti, iret, popf
            extra={"if_modifier": raw[i] in (0xFA, 0xFB, 0xCF, 0x9D), "pushf": raw[i] == 0x9C},
        )
        if self.int3_step():
            emulate = prepare_emulation(insn, self.is64)
            if emulate is not None:  # kprobe_emulate_*(): no slot runs
                ainsn.simulate = True
                ainsn.slot = b""
                ainsn.extra["emulate"] = emulate
            else:
                ainsn.slot = slot_bytes + bytes([INT3_INSN_OPCODE])
                ainsn.extra["int3_step"] = True
        return ainsn

    def arch_simulate_insn(
        self, mem: Memory | None, regs: PtRegs, addr: int, ainsn: ArchSpecificInsn
    ) -> None:
        # setup_singlestep(): p->ainsn.emulate_op(p, regs), from the instruction after it
        _name, op = ainsn.extra["emulate"]
        op(mem, regs, (addr + ainsn.length) & self.mask, self.word)

    def set_current_kprobe_flags(self, kcb: Any, regs: PtRegs, ainsn: ArchSpecificInsn) -> None:
        flags = int(regs.flags)
        kcb.saved_flags = kcb.old_flags = flags & (X86_EFLAGS_TF | X86_EFLAGS_IF)
        if ainsn.extra.get("if_modifier"):
            kcb.saved_flags &= ~X86_EFLAGS_IF

    def prepare_singlestep(
        self, kcb: Any, regs: PtRegs, addr: int, slot: int, ainsn: ArchSpecificInsn
    ) -> None:
        r: Any = regs
        if ainsn.extra.get("int3_step"):  # setup_singlestep() (v5.13): IF off, ip to the copy
            r.flags = int(r.flags) & ~X86_EFLAGS_IF
        else:  # setup_singlestep(): TF on, IF off, ip to the copy
            r.flags = (int(r.flags) | X86_EFLAGS_TF) & ~X86_EFLAGS_IF
        r.ip = slot

    def resume_execution(
        self, kcb: Any, regs: PtRegs, mem: Memory, addr: int, slot: int, ainsn: ArchSpecificInsn
    ) -> None:
        r: Any = regs
        if ainsn.extra.get("int3_step"):
            # resume_singlestep(): "regs->ip is executed int3 so must be a step back"; only
            # instructions that fall through reach the int3 (the rest are emulated)
            r.flags = int(r.flags) | kcb.saved_flags
            r.ip = (int(r.ip) + addr - slot - 1) & self.mask
            return
        r.flags = int(r.flags) & ~X86_EFLAGS_TF
        sp = int(r.sp)
        if ainsn.extra.get("pushf"):  # pushfl: TF/IF in the pushed flags as before the hit
            tos = int.from_bytes(mem.read(sp, self.word), "little")
            tos = (tos & ~(X86_EFLAGS_TF | X86_EFLAGS_IF)) | kcb.old_flags
            mem.write(sp, tos.to_bytes(self.word, "little"))
        self.fix_after_step(ainsn.fixups, regs, mem, addr, slot)
        # kprobe_debug_handler(): regs->flags |= kcb->kprobe_saved_flags
        r.flags = int(r.flags) | kcb.saved_flags

    def fix_after_step(self, fixups: int, regs: PtRegs, mem: Memory, orig: int, copy: int) -> None:
        """The fix-ups after the insn at ``orig`` ran as its copy at ``copy``, the same for a
        kprobe's slot (resume_execution()) and a uprobe's XOL slot (the post_xol op): a call's
        return address (UPROBE_FIX_CALL) and a relative ip (UPROBE_FIX_IP) moved by orig - copy."""
        r: Any = regs
        correction = orig - copy
        if fixups & UPROBE_FIX_CALL:
            sp = int(r.sp)
            tos = int.from_bytes(mem.read(sp, self.word), "little")
            mem.write(sp, ((tos + correction) & self.mask).to_bytes(self.word, "little"))
        if fixups & UPROBE_FIX_IP:
            r.ip = (int(r.ip) + correction) & self.mask

    def singlestep_fault_fixup(self, kcb: Any, regs: PtRegs, addr: int) -> None:
        # kprobe_fault_handler() (and the i386 fault-handling patch): ip back to the probe, TF
        # off, old flags back
        r: Any = regs
        r.ip = addr
        r.flags = (int(r.flags) & ~X86_EFLAGS_TF) | kcb.old_flags

    def arch_prepare_kretprobe(self, mem: Memory, regs: PtRegs, trampoline: int) -> tuple[int, int]:
        sara = int(regs.sp)
        ret = int.from_bytes(mem.read(sara, self.word), "little")
        mem.write(sara, trampoline.to_bytes(self.word, "little"))
        return ret, sara

    def kretprobe_frame(self, regs: PtRegs) -> int:
        # trampoline_handler(): frame_pointer = &regs->sp, the slot the address was popped from
        return (int(regs.sp) - self.word) & self.mask

    # --- uprobes ----------------------------------------------------------------------------

    def arch_uprobe_analyze_insn(self, insn: bytes, vaddr: int) -> ArchSpecificInsn:
        dec = self.decode(insn, vaddr)
        raw = bytes(dec.bytes)
        if insn_undecoded(raw, self.is64, sha512_vex=self.sha512_vex()):
            raise refuse_insn(
                errno.ENOEXEC,
                f"{self.name}: the kernel's decoder does not know {dec.mnemonic} at {vaddr:#x}",
            )
        why = uprobe_refuses(raw, self.is64)
        if why is not None:
            # the kernel returns -ENOTSUPP (524, kernel-internal); EOPNOTSUPP is its user face
            raise refuse_insn(
                errno.EOPNOTSUPP,
                f"{self.name}: uprobes refuse {self._shown(dec)} at {vaddr:#x}: {why}",
            )
        auprobe = ArchSpecificInsn(
            insn=raw,
            length=len(raw),
            fixups=self._fixups(raw),
        )
        self.riprel_analyze(auprobe, self._rip_disp(dec))
        return auprobe

    # riprel_analyze() / riprel_pre_xol() / riprel_post_xol(): no %rip-relative mode on
    # 32-bit (the kernel's stubs); x86_64 overrides them.

    def riprel_analyze(self, auprobe: ArchSpecificInsn, disp_off: int | None) -> None:
        """Rewrite a %rip-relative insn for the slot (auprobe.slot), set fixups."""

    def riprel_pre_xol(
        self, auprobe: ArchSpecificInsn, regs: PtRegs, autask: ArchUprobeTask, vaddr: int
    ) -> None:
        """Save the scratch register, load it with what %rip would have been."""

    def riprel_post_xol(
        self, auprobe: ArchSpecificInsn, regs: PtRegs, autask: ArchUprobeTask
    ) -> None:
        """Restore the scratch register (after the step, and on abort)."""

    def arch_uprobe_skip_sstep(
        self, auprobe: ArchSpecificInsn, regs: PtRegs, mem: Memory | None = None
    ) -> bool:
        # kuprobe.model.arch.x86_uprobe_emulate: what this kernel emulates (handlers saw
        # ip == vaddr); the decision is per Machine, the auprobe is shared
        rule = self.semantics.uprobe_skip_sstep
        key = f"emulate:{rule}"
        if key not in auprobe.extra:
            auprobe.extra[key] = uprobe_emulation(auprobe.insn, auprobe.length, self.is64, rule)
        emulate = auprobe.extra[key]
        if emulate is None:
            return False
        _name, op = emulate
        op(mem, regs, int(regs.ip), self.word)
        return True

    def arch_uprobe_pre_xol(self, auprobe: ArchUprobe, regs: PtRegs, current: Current) -> None:
        r: Any = regs
        utask, thread = current.utask, current.thread
        utask.autask.saved_trap_nr = thread.trap_nr
        thread.trap_nr = UPROBE_TRAP_NR
        r.ip = utask.xol_vaddr
        utask.autask.saved_tf = bool(int(r.flags) & X86_EFLAGS_TF)
        r.flags = int(r.flags) | X86_EFLAGS_TF  # user_enable_single_step()
        self.riprel_pre_xol(auprobe, regs, utask.autask, utask.vaddr)  # default_pre_xol_op()

    def arch_uprobe_post_xol(self, auprobe: ArchUprobe, regs: PtRegs, current: Current) -> bool:
        r: Any = regs
        utask, thread = current.utask, current.thread
        autask = utask.autask
        trapped = thread.trap_nr != UPROBE_TRAP_NR
        thread.trap_nr = autask.saved_trap_nr
        self.riprel_post_xol(auprobe, regs, autask)  # default_post_xol_op(), first of all
        if not autask.saved_tf:
            r.flags = int(r.flags) & ~X86_EFLAGS_TF
        if trapped:
            return False
        self.fix_after_step(auprobe.fixups, regs, current.mm, utask.vaddr, utask.xol_vaddr)
        return True

    def arch_uprobe_xol_was_trapped(self, t: Current) -> bool:
        return bool(t.thread.trap_nr != UPROBE_TRAP_NR)

    def arch_uprobe_abort_xol(self, auprobe: ArchUprobe, regs: PtRegs, current: Current) -> None:
        r: Any = regs
        autask = current.utask.autask
        self.riprel_post_xol(auprobe, regs, autask)  # default_abort_op()
        current.thread.trap_nr = autask.saved_trap_nr
        r.ip = current.utask.vaddr
        if not autask.saved_tf:
            r.flags = int(r.flags) & ~X86_EFLAGS_TF

    def arch_uretprobe_hijack_return_addr(self, mem: Memory, regs: PtRegs, trampoline: int) -> int:
        sp = int(regs.sp)
        orig = int.from_bytes(mem.read(sp, self.word), "little")
        mem.write(sp, trampoline.to_bytes(self.word, "little"))
        return orig
