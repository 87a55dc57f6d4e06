"""arm64: BRK breakpoints with their own immediates, steps out of line, simulated branches.

Sources: arch/arm64/kernel/probes/kprobes.c (arch_prepare_kprobe, setup_singlestep,
kprobes_save_local_irqflag, post_kprobe_handler, kprobe_fault_handler,
kprobe_breakpoint_ss_handler, arch_prepare_kretprobe), arch/arm64/kernel/probes/uprobes.c
(arch_uprobe_analyze_insn, arch_uprobe_pre_xol/post_xol/abort_xol, arch_uprobe_skip_sstep,
arch_uretprobe_hijack_return_addr, arch_uretprobe_is_alive), arch/arm64/include/asm/brk-imm.h,
probes.h, uprobes.h, kprobes.h, and the patch "arm64: Kprobes with single stepping support".

How the model steps an instruction out of line. The kernel has two mechanisms:

- today's kprobes (since "arm64: kprobes: Use BRK instead of single-step when executing
  instructions out-of-line", v5.10): the slot is ``{insn, BRK #KPROBES_BRK_SS_IMM}``, run
  with DAIF masked; the second BRK is the "step done" trap (kprobe_breakpoint_ss_handler),
  resuming at addr + 4. The model runs exactly that.
- uprobes, and kprobes as the patch "arm64: Kprobes with single stepping support" has them
  (``Machine(semantics="seed")``): the slot is ``{insn}`` and the CPU's software step
  (MDSCR_EL1.SS, PSTATE.SS, PSTATE.D clear) raises a step exception after it. Unicorn raises no
  step exception on AArch64 (measured: MDSCR_EL1.SS|KDE and PSTATE.SS set, PSTATE.D clear:
  the code runs on untrapped), so the model puts a BRK with an immediate no kernel uses
  (MODEL_SS_BRK_IMM) after the instruction, and reports that trap as the step exception.
  The trap comes where the step exception would: pc = slot + 4, the instruction done, nothing
  else run (every insn that could branch is simulated, never stepped). How the trace differs
  from the hardware's: the emulator fetches one more instruction per step (the stand-in
  BRK), and a uprobe XOL slot is 8 bytes, not the kernel's 4 (UPROBE_XOL_SLOT_BYTES).
"""

from __future__ import annotations

import errno
import signal
from typing import Any, ClassVar

from kuprobe.errors import ProbeError
from kuprobe.model.arch.arm64_insn import (
    INSN_GOOD_NO_SLOT,
    INSN_REJECTED,
    Simulate,
    arm_kprobe_decode_insn,
    arm_probe_decode_insn,
    insn_is,
)
from kuprobe.model.arch.base import (
    RP_CHECK_CHAIN_CALL,
    TRAP_BREAKPOINT,
    TRAP_OTHER,
    TRAP_SINGLESTEP,
    Arch,
    ArchSpecificInsn,
    ArchUprobe,
    Current,
    Memory,
    refuse_insn,
)
from kuprobe.regs import PtRegs

# arch/arm64/include/asm/brk-imm.h
KPROBES_BRK_IMM = 0x004
UPROBES_BRK_IMM = 0x005
KPROBES_BRK_SS_IMM = 0x006
KRETPROBES_BRK_IMM = 0x007
# The model's stand-in for the CPU's software-step exception (see the module docstring): an
# immediate brk-imm.h leaves unused.
MODEL_SS_BRK_IMM = 0x0F0
# arch/arm64/include/asm/debug-monitors.h: AARCH64_BREAK_MON, BRK #imm16 = MON | imm16 << 5
AARCH64_BREAK_MON = 0xD4200000
AARCH64_INSN_SIZE = 4
AARCH64_INSN_HINT_NOP = 0xD503201F  # arch/arm64/include/asm/insn.h: aarch64_insn_gen_nop()
# arch/arm64/include/uapi/asm/ptrace.h: PSR_* bits of pstate
PSR_F_BIT = 0x040
PSR_I_BIT = 0x080
PSR_A_BIT = 0x100
PSR_D_BIT = 0x200
DAIF_MASK = PSR_D_BIT | PSR_A_BIT | PSR_I_BIT | PSR_F_BIT
DBG_SPSR_SS = 1 << 21  # arch/arm64/include/asm/debug-monitors.h: PSTATE.SS
# arch/arm64/kernel/probes/uprobes.c: fault_code while an XOL step is in flight
UPROBE_INV_FAULT_CODE = 0xFFFFFFFF
# arch/arm64/include/asm/esr.h: ESR_ELx_EC_DABT_LOW << ESR_ELx_EC_SHIFT | ESR_ELx_IL: the esr
# a user data abort leaves in thread.fault_code, and kprobe_fault_handler()'s fsr
ESR_DABT = (0x24 << 26) | (1 << 25)
# Unicorn (QEMU target/arm/cpu.h) exception numbers: EXCP_UDEF, EXCP_BKPT
EXCP_UDEF = 1
EXCP_BKPT = 7


def brk(imm: int) -> bytes:
    """The BRK #imm encoding (little-endian), as aarch64_insn_gen_*/BRK64_OPCODE_* build it."""
    return (AARCH64_BREAK_MON | (imm << 5)).to_bytes(4, "little")


BRK64_OPCODE_KPROBES = brk(KPROBES_BRK_IMM)
BRK64_OPCODE_UPROBES = brk(UPROBES_BRK_IMM)
BRK64_OPCODE_KPROBES_SS = brk(KPROBES_BRK_SS_IMM)
BRK64_OPCODE_KRETPROBES = brk(KRETPROBES_BRK_IMM)
MODEL_SS_BRK = brk(MODEL_SS_BRK_IMM)
STEP_DONE_IMMS = frozenset({KPROBES_BRK_SS_IMM, MODEL_SS_BRK_IMM})


class Arm64Hooks(Arch):
    name: ClassVar[str] = "arm64"
    bits: ClassVar[int] = 64
    uc_arch: ClassVar[str] = "ARM64"
    # arch/arm64/include/uapi/asm/ptrace.h: struct user_pt_regs -> the CPU's registers
    uc_regs: ClassVar[dict[str, str | None]] = {
        **{f"x{i}": f"X{i}" for i in range(31)},
        "sp": "SP",
        "pc": "PC",
        "pstate": "PSTATE",
    }
    BREAKPOINT_TRAP: ClassVar[int] = EXCP_BKPT
    DEBUG_TRAP: ClassVar[int] = -1  # no step exception: see the module docstring
    PAGE_FAULT_TRAPNR: ClassVar[int] = ESR_DABT
    # arch/arm64/include/asm/kprobes.h, uprobes.h (MAX_INSN_SIZE is 2 kprobe_opcode_t)
    BREAKPOINT_INSN: ClassVar[bytes] = BRK64_OPCODE_KPROBES
    KRETPROBE_TRAMPOLINE_INSN: ClassVar[bytes] = BRK64_OPCODE_KRETPROBES
    NOP_INSN: ClassVar[bytes] = AARCH64_INSN_HINT_NOP.to_bytes(4, "little")
    UPROBE_SWBP_INSN: ClassVar[bytes] = BRK64_OPCODE_UPROBES
    MAX_INSN_SIZE: ClassVar[int] = 2 * AARCH64_INSN_SIZE
    MAX_UINSN_BYTES: ClassVar[int] = AARCH64_INSN_SIZE
    UPROBE_XOL_SLOT_BYTES: ClassVar[int] = 2 * AARCH64_INSN_SIZE  # the kernel's 4 + MODEL_SS_BRK
    # arch_prepare_kprobe() / arch_uprobe_analyze_insn(): a misaligned address is -EINVAL
    BOUNDARY_ERRNO: ClassVar[int] = errno.EINVAL
    # arch/arm64/kernel/probes/kprobes.c: reenter_kprobe(): a hit during HIT_SS is fatal too
    REENTER_FATAL: ClassVar[frozenset[str]] = frozenset({"HIT_SS", "REENTER"})
    # arch/arm64/include/asm/elf.h: ELF_ET_DYN_BASE, 2/3 of a 48-bit TASK_SIZE, page aligned
    # (load_elf_binary() also aligns it to the largest p_align, 64 KiB for arm64's
    # toolchain: a real PIE lands at 0xaaaaaaaa0000; the model keeps the page alignment)
    ELF_ET_DYN_BASE: ClassVar[int] = 0xAAAAAAAAA000

    # --- registers and the ABI (AAPCS64: x0-x7, then the stack; kuprobe/arch.py) ------------

    def call_return_address(self, mem: Memory, sp: int, return_addr: int) -> dict[str, int]:
        # bl leaves the return address in the link register; sp stays 16-byte aligned
        return {"sp": sp, "x30": return_addr}

    def trap_kind(self, intno: int, regs: PtRegs, mem: Memory) -> str:
        # arch/arm64/kernel/debug-monitors.c: brk_handler() dispatches on the immediate
        # (esr_brk_comment()); KPROBES_BRK_SS_IMM and the model's step stand-in end a step.
        if intno != EXCP_BKPT:
            return TRAP_OTHER
        insn = int.from_bytes(mem.read(int(regs.pc), 4), "little")
        if (insn >> 5) & 0xFFFF in STEP_DONE_IMMS:
            return TRAP_SINGLESTEP
        return TRAP_BREAKPOINT

    def trap_signal(self, trapnr: int) -> int:
        # arch/arm64/kernel/traps.c: an undefined instruction is SIGILL, a BRK nobody claims
        # SIGTRAP (brk_handler -> arm64_notify_die)
        return int({EXCP_BKPT: signal.SIGTRAP}.get(trapnr, signal.SIGILL))

    def set_user_fault(self, thread: Any) -> None:
        # arch/arm64/mm/fault.c: __do_user_fault(): current->thread.fault_code = esr
        thread.fault_code = ESR_DABT

    # --- kprobes ----------------------------------------------------------------------------

    def _hardware_step(self) -> bool:
        """The row arm64_kprobe_step (kuprobe.model.semantics): the seed's hardware step."""
        return self.semantics.arm64_kprobe_step == "hardware_step"

    def can_probe(self, code: bytes, offset: int) -> bool:
        # fixed-size instructions: alignment is the whole test (arch_prepare_kprobe(): addr
        # & 0x3), no decoding from the function's start as x86's can_probe() does
        return offset % AARCH64_INSN_SIZE == 0

    def kprobe_trap_addr(self, regs: PtRegs) -> int:
        return int(regs.pc)  # BRK does not advance the pc

    def arch_prepare_kprobe(
        self, addr: int, code: bytes, slot: int, before: bytes = b""
    ) -> ArchSpecificInsn:
        if addr & 0x3:
            raise ProbeError(errno.EINVAL, f"{addr:#x} is not 4-byte aligned")
        opcode = int.from_bytes(code[:4], "little")
        decoded, handler = arm_kprobe_decode_insn(opcode, before)
        if decoded == INSN_REJECTED:
            atomic = arm_kprobe_decode_insn(opcode, b"")[0] != INSN_REJECTED
            raise refuse_insn(
                errno.EINVAL,
                f"arm64: kprobes cannot step or simulate {opcode:#010x} at {addr:#x}"
                + (" (inside an exclusive load/store sequence)" if atomic else ""),
            )
        ainsn = ArchSpecificInsn(insn=code[:4], length=AARCH64_INSN_SIZE)
        if decoded == INSN_GOOD_NO_SLOT:  # arch_prepare_simulate(): no slot, restore 0
            ainsn.simulate = True
            ainsn.extra["handler"] = handler
        else:  # arch_prepare_ss_slot(): the slot, and restore = addr + 4
            step_done = MODEL_SS_BRK if self._hardware_step() else BRK64_OPCODE_KPROBES_SS
            ainsn.slot = code[:4] + step_done
            ainsn.extra["restore"] = addr + AARCH64_INSN_SIZE
        return ainsn

    def arch_simulate_insn(
        self, mem: Memory | None, regs: PtRegs, addr: int, ainsn: ArchSpecificInsn
    ) -> None:
        """arch_simulate_insn() / arch_uprobe_skip_sstep(): the api.handler at ``addr``."""
        handler: Simulate | None = ainsn.extra.get("handler")
        if handler is not None:
            handler(int.from_bytes(ainsn.insn, "little"), addr, regs, mem)

    def prepare_singlestep(
        self, kcb: Any, regs: PtRegs, addr: int, slot: int, ainsn: ArchSpecificInsn
    ) -> None:
        r: Any = regs
        pstate = int(r.pstate)
        kcb.saved_flags = pstate & DAIF_MASK  # kprobes_save_local_irqflag()
        if self._hardware_step():  # IRQs off, debug exceptions on, the step armed
            r.pstate = ((pstate | PSR_I_BIT) & ~PSR_D_BIT) | DBG_SPSR_SS
        else:  # today: everything masked; the BRK after the slot ends the step
            r.pstate = pstate | DAIF_MASK
        r.pc = slot

    def resume_execution(
        self, kcb: Any, regs: PtRegs, mem: Memory, addr: int, slot: int, ainsn: ArchSpecificInsn
    ) -> None:
        r: Any = regs
        # kprobes_restore_local_irqflag(), kernel_disable_single_step()
        r.pstate = (int(r.pstate) & ~(DAIF_MASK | DBG_SPSR_SS)) | kcb.saved_flags
        # post_kprobe_handler(): "return addr restore if non-branching insn"
        r.pc = ainsn.extra["restore"]

    def kprobe_ss_hit(self, regs: PtRegs, slot: int) -> bool:
        # kprobe_breakpoint_ss_handler() (kprobe_ss_hit() with semantics="seed"): ours only at
        # slot + 4. Elsewhere "not ours, kprobes should ignore it" (DBG_HOOK_ERROR), and
        # brk_handler() finds no other hook and dies ("Oops - BRK"); the seed's hardware step
        # warned ("Unexpected kernel single-step exception at EL1") and stepped on, from
        # nowhere the model can follow.
        r: Any = regs
        return int(r.pc) == slot + AARCH64_INSN_SIZE

    def nested_step_possible(self) -> bool:
        # Today the step ends on a BRK, which is taken in any context. The hardware step of
        # the seed's design is a debug exception, masked (PSTATE.D) while one is handled:
        # "The aarch64 exception handling does not allow nesting of debug exceptions" (the
        # patch "Avoid using kprobe in the arm64 kretprobe trampoline").
        return not self._hardware_step()

    def singlestep_fault_fixup(self, kcb: Any, regs: PtRegs, addr: int) -> None:
        # kprobe_fault_handler(): pc back to the probe (and, with semantics="seed", the step
        # disarmed); today's kernel leaves pstate as setup_singlestep() made it
        r: Any = regs
        r.pc = addr
        if self._hardware_step():
            r.pstate = int(r.pstate) & ~DBG_SPSR_SS

    def arch_prepare_kretprobe(self, mem: Memory, regs: PtRegs, trampoline: int) -> tuple[int, int]:
        # arch_prepare_kretprobe() / arch_rethook_prepare(): ret_addr from x30, the frame is x29
        r: Any = regs
        ret = int(r.x30)
        r.x30 = trampoline
        return ret, int(r.x29)

    def kretprobe_frame(self, regs: PtRegs) -> int:
        # kretprobe_trampoline_handler(regs, (void *)regs->regs[29])
        return int(regs.x29)

    # --- uprobes ----------------------------------------------------------------------------

    def uprobe_get_swbp_addr(self, regs: PtRegs) -> int:
        return int(regs.pc)

    def is_trap_insn(self, insn: bytes) -> bool:
        # brk_handler() sends only UPROBES_BRK_IMM to uprobes; any other BRK in user space is
        # SIGTRAP: to handle_swbp() every BRK that is not a uprobe's is "not ours"
        return len(insn) >= 4 and insn_is("brk", int.from_bytes(insn[:4], "little"))

    def arch_uprobe_analyze_insn(self, insn: bytes, vaddr: int) -> ArchSpecificInsn:
        if vaddr & 0x3:
            raise ProbeError(errno.EINVAL, f"arm64: uprobe address {vaddr:#x} is not aligned")
        opcode = int.from_bytes(insn[:4], "little")
        decoded, handler = arm_probe_decode_insn(opcode)
        if decoded == INSN_REJECTED:
            raise refuse_insn(
                errno.EINVAL, f"arm64: uprobes cannot step or simulate {opcode:#010x} at {vaddr:#x}"
            )
        auprobe = ArchSpecificInsn(insn=insn[:4], length=AARCH64_INSN_SIZE)
        if decoded == INSN_GOOD_NO_SLOT:
            auprobe.skip_sstep = auprobe.simulate = True
            auprobe.extra["handler"] = handler
        return auprobe

    def arch_uprobe_copy_ixol(self, auprobe: ArchSpecificInsn, vaddr: int, xol_vaddr: int) -> bytes:
        return auprobe.insn + MODEL_SS_BRK  # the insn, and the step exception's stand-in

    def arch_uprobe_skip_sstep(
        self, auprobe: ArchSpecificInsn, regs: PtRegs, mem: Memory | None = None
    ) -> bool:
        if not auprobe.simulate:
            return False
        # uprobes simulate no literal load: no memory access
        self.arch_simulate_insn(None, regs, int(regs.pc), auprobe)
        return True

    # arch/arm64/kernel/probes/uprobes.c. Unlike x86's, these save and restore nothing
    # (arm64's struct arch_uprobe_task is empty): user_enable/disable_single_step() arm and
    # disarm the step, and thread.fault_code keeps the sentinel (or the fault) afterwards.

    def arch_uprobe_pre_xol(self, auprobe: ArchUprobe, regs: PtRegs, current: Current) -> None:
        current.thread.fault_code = UPROBE_INV_FAULT_CODE
        regs.pc = current.utask.xol_vaddr
        # user_enable_single_step(): the stand-in BRK after the slot

    def arch_uprobe_post_xol(self, auprobe: ArchUprobe, regs: PtRegs, current: Current) -> bool:
        regs.pc = current.utask.vaddr + AARCH64_INSN_SIZE
        return True

    def arch_uprobe_xol_was_trapped(self, t: Current) -> bool:
        return bool(t.thread.fault_code != UPROBE_INV_FAULT_CODE)

    def arch_uprobe_abort_xol(self, auprobe: ArchUprobe, regs: PtRegs, current: Current) -> None:
        regs.pc = current.utask.vaddr

    def arch_uretprobe_hijack_return_addr(self, mem: Memory, regs: PtRegs, trampoline: int) -> int:
        r: Any = regs
        orig = int(r.x30)  # procedure_link_pointer()
        r.x30 = trampoline
        return orig

    def arch_uretprobe_is_alive(self, stack: int, ctx: str, regs: PtRegs) -> bool:
        # "If a simple branch instruction (B) was called for retprobed assembly label then
        # return true even when regs->sp and ret->stack are same."
        sp = int(regs.sp)
        return sp <= stack if ctx == RP_CHECK_CHAIN_CALL else sp < stack
