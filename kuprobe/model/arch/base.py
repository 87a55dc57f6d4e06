"""The arch contract: the kernel's arch_* hooks, with the kernel's ``__weak`` defaults.

An arch module subclasses :class:`Arch` (``X86_64Hooks``, ``I386Hooks``, ``Arm64Hooks``: an
arch's hooks, not its record in kuprobe.arch) and overrides only what differs, as the kernel's
arch/*/kernel/{kprobes,uprobes}.c override the weak symbols of kernel/kprobes.c and
kernel/events/uprobes.c. Generic code (``kuprobe.model.core``) calls only these hooks.
"""

from __future__ import annotations

import errno
import signal
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Protocol

from kuprobe.arch import RegLayout
from kuprobe.errors import ProbeError
from kuprobe.insn import is_boundary
from kuprobe.model.semantics import TODAY, Semantics
from kuprobe.regs import PtRegs, regs_class, signed

# What a CPU exception means to the kernel (notify_die(): DIE_INT3, DIE_DEBUG, or other)
TRAP_BREAKPOINT = "breakpoint"
TRAP_SINGLESTEP = "singlestep"
TRAP_OTHER = "other"
# include/linux/uprobes.h: enum rp_check, the contexts of arch_uretprobe_is_alive()
RP_CHECK_CALL = "call"
RP_CHECK_CHAIN_CALL = "chain_call"
RP_CHECK_RET = "ret"
# Where the documented semantics (the patches) and today's kernels differ, a Machine does
# either (``Machine(semantics=...)``, kuprobe.model.semantics); each arch reads its rows.


class Memory(Protocol):
    """What an arch hook may touch: the task's (or the kernel's) memory."""

    def read(self, addr: int, size: int) -> bytes: ...
    def write(self, addr: int, data: bytes) -> None: ...


@dataclass
class ArchSpecificInsn:
    """``struct arch_specific_insn`` (kprobes) / ``struct arch_uprobe`` (uprobes).

    ``insn`` the original bytes; ``slot`` the bytes that run out of line; ``fixups`` what
    the arch must correct after the step; ``extra`` arch-private data.
    """

    insn: bytes
    length: int
    slot: bytes = b""
    fixups: int = 0
    skip_sstep: bool = False
    simulate: bool = False  # no step out of line: the arch simulates it (arch_simulate_insn)
    extra: dict[str, Any] = field(default_factory=dict)


# include/linux/uprobes.h: struct arch_uprobe (the uprobe side of the one record above)
ArchUprobe = ArchSpecificInsn


@dataclass
class ArchUprobeTask:
    """``struct arch_uprobe_task``: what pre_xol saves for post_xol/abort_xol."""

    saved_trap_nr: int = 0
    saved_tf: bool = False
    saved_scratch_register: int = 0


class UprobeTaskView(Protocol):
    """The fields of ``struct uprobe_task`` the arch hooks read (current->utask)."""

    vaddr: int
    xol_vaddr: int
    autask: ArchUprobeTask


class Current(Protocol):
    """``current`` as the kernel's arch_uprobe_*_xol() hooks see it: only ``(auprobe, regs)``
    is passed, the rest they read from current->utask, current->thread (x86 ``trap_nr``,
    arm64 ``fault_code``) and the task's memory (copy_to_user(), here ``mm``)."""

    @property
    def utask(self) -> UprobeTaskView: ...
    @property
    def thread(self) -> Any: ...
    @property
    def mm(self) -> Memory: ...


def refuse_insn(err: int, message: str) -> ProbeError:
    """The error of a probe on an instruction the arch cannot step or emulate."""
    return ProbeError(err, message, hint="probe another instruction of the function")


class Arch:
    """One arch: ABI, register mapping, breakpoint and single-step mechanics."""

    name: ClassVar[str]
    bits: ClassVar[int]
    # Unicorn names of this arch, for kuprobe.model.emu (data, no unicorn import here)
    uc_arch: ClassVar[str]
    uc_regs: ClassVar[dict[str, str | None]]  # pt_regs field -> Unicorn register name

    # which of the kernel's designs this Machine runs (kuprobe.model.semantics)
    semantics: Semantics = TODAY

    # CPU exception numbers as the emulator reports them
    BREAKPOINT_TRAP: ClassVar[int]
    DEBUG_TRAP: ClassVar[int]
    PAGE_FAULT_TRAPNR: ClassVar[int]

    # include/linux/kprobes.h, include/linux/uprobes.h: per-arch constants
    BREAKPOINT_INSN: ClassVar[bytes]
    KRETPROBE_TRAMPOLINE_INSN: ClassVar[bytes]  # what traps into the kretprobe trampoline
    NOP_INSN: ClassVar[bytes]  # the trampoline's code when a kprobe on it does the trapping
    UPROBE_SWBP_INSN: ClassVar[bytes]
    MAX_INSN_SIZE: ClassVar[int]
    MAX_UINSN_BYTES: ClassVar[int]
    UPROBE_XOL_SLOT_BYTES: ClassVar[int]
    # the errno of a probe address that is no instruction boundary (x86: can_probe() ->
    # -EILSEQ; arm64: arch_prepare_kprobe() / arch_uprobe_analyze_insn() -> -EINVAL)
    BOUNDARY_ERRNO: ClassVar[int] = errno.EILSEQ
    # reenter_kprobe(): the kprobe_status names in which another hit is unrecoverable (BUG())
    REENTER_FATAL: ClassVar[frozenset[str]] = frozenset({"REENTER"})

    # The model's address-space layout (below the ELF's text, which starts at 4 MiB or more)
    CALL_RETURN: ClassVar[int] = 0x10000  # m.call()'s return address: reaching it ends a call
    KRETPROBE_TRAMPOLINE: ClassVar[int] = 0x11000  # kretprobe_trampoline (kernel space)
    INSN_PAGES: ClassVar[int] = 0x20000  # kprobe instruction slots (get_insn_slot)
    XOL_AREA: ClassVar[int] = 0x100000  # a process's XOL area (xol_add_vma)
    ELF_ET_DYN_BASE: ClassVar[int] = 0x40000000  # where a PIE (ET_DYN) is loaded
    STACK_TOP: ClassVar[int] = 0x7FF00000
    STACK_SIZE: ClassVar[int] = 0x200000

    @property
    def word(self) -> int:
        return self.bits // 8

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    # --- registers and the ABI ------------------------------------------------------------

    @cached_property
    def layout(self) -> RegLayout:
        """This arch's ``struct pt_regs`` and ABI registers (the record in kuprobe/arch.py)."""
        return regs_class(self.name).layout

    @property
    def reg_defaults(self) -> dict[str, int]:
        """The pt_regs fields the CPU has no register for, and their values (else 0)."""
        return {}

    def setup_call(
        self, mem: Memory, sp: int, args: tuple[int, ...], return_addr: int
    ) -> dict[str, int]:
        """Registers that make the next instruction the first of a call with ``args``: the
        psABI's argument registers (layout.user_args), the rest on the stack from a 16-byte
        aligned sp up, then the call instruction's part (:meth:`call_return_address`)."""
        user_args = self.layout.user_args
        regs = {name: value & self.mask for name, value in zip(user_args, args, strict=False)}
        stack_args = args[len(user_args) :]
        sp = (sp - self.word * len(stack_args)) & ~0xF
        for i, value in enumerate(stack_args):
            mem.write(sp + self.word * i, (value & self.mask).to_bytes(self.word, "little"))
        regs.update(self.call_return_address(mem, sp, return_addr))
        return regs

    def call_return_address(self, mem: Memory, sp: int, return_addr: int) -> dict[str, int]:
        """What the call instruction adds at ``sp`` (x86: call pushes the return address;
        arm64: bl puts it in the link register)."""
        raise NotImplementedError

    def call_result(self, regs: dict[str, int]) -> int:
        """The called function's return value (regs_return_value()), signed."""
        return signed(regs[self.layout.retval], self.bits)

    def trap_kind(self, intno: int, regs: PtRegs, mem: Memory) -> str:
        """Which handler a CPU exception goes to. An arch whose single-step ends on a second
        breakpoint (arm64's BRK after the slot) tells the two apart here."""
        if intno == self.BREAKPOINT_TRAP:
            return TRAP_BREAKPOINT
        if intno == self.DEBUG_TRAP:
            return TRAP_SINGLESTEP
        return TRAP_OTHER

    def trap_signal(self, trapnr: int) -> int:
        """The signal a user task gets for a CPU exception nobody handled."""
        return int(signal.SIGILL)

    def set_user_fault(self, thread: Any) -> None:
        """What the arch's user page-fault path leaves in ``thread`` (x86: trap_nr = #PF;
        arm64: fault_code = esr), which arch_uprobe_xol_was_trapped() reads."""
        raise NotImplementedError

    def stack_pointer_field(self) -> str:
        return self.layout.sp

    def ip_field(self) -> str:
        return self.layout.ip

    def handler_stack(self, sp: int) -> int:
        """Where code a handler calls may put its frames, below the trapped one."""
        return (sp - 512) & ~0xF

    # --- kprobes (kernel/kprobes.c weak defaults, arch/*/kernel/kprobes/core.c) ---------

    def can_probe(self, code: bytes, offset: int) -> bool:
        """Whether ``offset`` into a function is an instruction boundary (arch can_probe())."""
        return is_boundary(self.name, code, offset)

    def kprobe_trap_addr(self, regs: PtRegs) -> int:
        """The probed address a breakpoint trap reports (x86: ip - 1)."""
        raise NotImplementedError

    def arch_prepare_kprobe(
        self, addr: int, code: bytes, slot: int, before: bytes = b""
    ) -> ArchSpecificInsn:
        """Decode the insn at ``addr`` (``before``: the function's bytes up to it), fill the
        slot or mark it simulated."""
        raise NotImplementedError

    def arch_simulate_insn(
        self, mem: Memory | None, regs: PtRegs, addr: int, ainsn: ArchSpecificInsn
    ) -> None:
        """Run an insn marked ``simulate`` on ``regs`` instead of stepping it."""
        raise NotImplementedError

    def arch_arm_kprobe(self, mem: Memory, addr: int) -> None:
        mem.write(addr, self.BREAKPOINT_INSN)

    def arch_disarm_kprobe(self, mem: Memory, addr: int, ainsn: ArchSpecificInsn) -> None:
        mem.write(addr, ainsn.insn[: len(self.BREAKPOINT_INSN)])

    def set_current_kprobe_flags(self, kcb: Any, regs: PtRegs, ainsn: ArchSpecificInsn) -> None:
        """The flags set_current_kprobe() saves (x86: TF and IF)."""

    def prepare_singlestep(
        self, kcb: Any, regs: PtRegs, addr: int, slot: int, ainsn: ArchSpecificInsn
    ) -> None:
        raise NotImplementedError

    def resume_execution(
        self, kcb: Any, regs: PtRegs, mem: Memory, addr: int, slot: int, ainsn: ArchSpecificInsn
    ) -> None:
        raise NotImplementedError

    def kprobe_ss_hit(self, regs: PtRegs, slot: int) -> bool:
        """Whether a step-done trap is the current kprobe's, whose copy is at ``slot`` (arm64:
        kprobe_ss_hit(), only at slot + 4). x86's int3 after the slot is matched on the
        breakpoint path, and its trap-flag step is always the current kprobe's."""
        return True

    def nested_step_possible(self) -> bool:
        """Whether a kprobe hit inside a kprobe's debug exception can be stepped (x86: int3
        and the trap flag nest; arm64's hardware step does not, see arch/arm64)."""
        return True

    def singlestep_fault_fixup(self, kcb: Any, regs: PtRegs, addr: int) -> None:
        """kprobe_fault_handler() while single-stepping: back to the probe, step state off."""
        raise NotImplementedError

    def arch_prepare_kretprobe(self, mem: Memory, regs: PtRegs, trampoline: int) -> tuple[int, int]:
        """Hijack the return address; returns (ret_addr, fp) as ri->ret_addr, ri->fp."""
        raise NotImplementedError

    def kretprobe_frame(self, regs: PtRegs) -> int:
        """At the trampoline: the frame pointer an instance recorded (ri->fp)."""
        raise NotImplementedError

    # --- uprobes (kernel/events/uprobes.c weak defaults, arch/*/kernel/uprobes.c) -------

    def uprobe_get_swbp_addr(self, regs: PtRegs) -> int:
        """kernel/events/uprobes.c: uprobe_get_swbp_addr() (__weak): ip - swbp size."""
        return (int(getattr(regs, self.ip_field())) - len(self.UPROBE_SWBP_INSN)) & self.mask

    def is_swbp_insn(self, insn: bytes) -> bool:
        """kernel/events/uprobes.c: is_swbp_insn() (__weak)."""
        return insn[: len(self.UPROBE_SWBP_INSN)] == self.UPROBE_SWBP_INSN

    def is_trap_insn(self, insn: bytes) -> bool:
        """kernel/events/uprobes.c: is_trap_insn() (__weak): any breakpoint is a trap."""
        return self.is_swbp_insn(insn)

    def arch_uprobe_analyze_insn(self, insn: bytes, vaddr: int) -> ArchSpecificInsn:
        raise ProbeError(errno.EOPNOTSUPP, f"{self.name}: uprobes not modelled")

    def arch_uprobe_copy_ixol(self, auprobe: ArchSpecificInsn, vaddr: int, xol_vaddr: int) -> bytes:
        """kernel/events/uprobes.c: arch_uprobe_copy_ixol() (__weak): arch.ixol as it is
        (what analyze_insn left in ``slot``, else the original bytes)."""
        return auprobe.slot or auprobe.insn

    # arch_uprobe_pre_xol(), arch_uprobe_post_xol(), arch_uprobe_abort_xol(): the kernel's take
    # (auprobe, regs) and read the rest from ``current`` (utask->vaddr, utask->xol_vaddr,
    # utask->autask, current->thread), as these do.

    def arch_uprobe_pre_xol(self, auprobe: ArchUprobe, regs: PtRegs, current: Current) -> None:
        """Prepare the step at utask->xol_vaddr of the insn probed at utask->vaddr."""
        raise NotImplementedError

    def arch_uprobe_post_xol(self, auprobe: ArchUprobe, regs: PtRegs, current: Current) -> bool:
        """Fix up after the step; False: the step trapped (restart at vaddr, signal)."""
        raise NotImplementedError

    def arch_uprobe_xol_was_trapped(self, t: Current) -> bool:
        raise NotImplementedError

    def arch_uprobe_abort_xol(self, auprobe: ArchUprobe, regs: PtRegs, current: Current) -> None:
        raise NotImplementedError

    def arch_uprobe_skip_sstep(
        self, auprobe: ArchSpecificInsn, regs: PtRegs, mem: Memory | None = None
    ) -> bool:
        """Emulate instead of stepping (``mem``: the task's memory, for a push); the weak
        default emulates nothing."""
        return False

    def arch_uretprobe_hijack_return_addr(self, mem: Memory, regs: PtRegs, trampoline: int) -> int:
        raise NotImplementedError

    def arch_uretprobe_is_alive(self, stack: int, ctx: str, regs: PtRegs) -> bool:
        """kernel/events/uprobes.c: arch_uretprobe_is_alive() (__weak): every frame lives."""
        return True
