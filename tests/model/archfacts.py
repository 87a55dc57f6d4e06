"""What the model tests need to know of each arch, stated independently of the model's code.

Each fact names where it comes from; a test reads these instead of branching on arch names.
"""

from __future__ import annotations

import errno

from kuprobe import regs_get_kernel_stack_nth
from kuprobe.model import ARCH_HOOKS
from kuprobe.regs import PtRegs

# The register a function returns its value in (regs_return_value(), asm/ptrace.h)
RET_REG = {"x86_64": "ax", "i386": "ax", "arm64": "x0"}
# tests/targets/funcs.c: the register holding x * 3 + 7 at mid_label in midpoint()
MID_REG = {"x86_64": "ax", "i386": "ax", "arm64": "x9"}
# the size of the nop at mid_label (one byte on x86, every insn 4 bytes on arm64)
NOP_SIZE = {"x86_64": 1, "i386": 1, "arm64": 4}
# a probe inside an instruction: x86 can_probe() -> -EILSEQ; arm64 arch_prepare_kprobe() and
# arch_uprobe_analyze_insn() -> -EINVAL for an address that is not 4-byte aligned
BOUNDARY_ERRNO = {"x86_64": errno.EILSEQ, "i386": errno.EILSEQ, "arm64": errno.EINVAL}
# Where the pc is when the breakpoint trap is taken: after int3 on x86, on the BRK on arm64
# (so a SIGTRAP handler that returns runs the BRK again)
TRAP_PC_AFTER_BREAKPOINT = {"x86_64": True, "i386": True, "arm64": False}
# Whether a hardware single-step can run inside a debug exception: x86's int3 and TF nest;
# AArch64 masks debug exceptions (PSTATE.D) while one is handled
NESTED_HARDWARE_STEP = {"x86_64": True, "i386": True, "arm64": False}
# The kprobe states in which a hit is the kernel's BUG(), not a miss: reenter_kprobe() in
# arch/x86/kernel/kprobes/core.c (case KPROBE_REENTER: "Unrecoverable kprobe detected") and
# arch/arm64/kernel/probes/kprobes.c (case KPROBE_HIT_SS, case KPROBE_REENTER)
REENTER_BUG = {"x86_64": {"REENTER"}, "i386": {"REENTER"}, "arm64": {"HIT_SS", "REENTER"}}
# The x86 family: rules of arch/x86 only (TF/IF, pushf, the NOP pattern, %rip-relative)
X86_ARCHES = sorted(a for a in ARCH_HOOKS if a in ("x86_64", "i386"))
ARM64_ARCHES = sorted(a for a in ARCH_HOOKS if a == "arm64")


def return_address(regs: PtRegs) -> int:
    """Where the current call returns to, at a function's first instruction or right after a
    call: the stack top on x86, the link register x30 on arm64."""
    if regs.arch == "arm64":
        return int(regs.x30)
    return regs_get_kernel_stack_nth(regs, 0)


def return_now(regs: PtRegs, value: int, word: int) -> None:
    """Make the function return ``value`` at once (a pre_handler that skips the function)."""
    setattr(regs, RET_REG[regs.arch], value)
    if regs.arch == "arm64":
        regs.pc = int(regs.x30)
        return
    regs.ip = regs_get_kernel_stack_nth(regs, 0)
    regs.sp += word
