"""One record per architecture: every per-arch fact kuprobe uses outside the model's arch hooks.

ELF machine, word size, ``struct pt_regs``, the argument registers of the kernel's and the
user-space calling conventions, syscall numbers, the host names ``uname -m`` prints, and the
capstone and Unicorn modes. Code elsewhere reads these records instead of branching on an arch
name; a new arch is one record here (and, for the model, one module under kuprobe/model/arch/).

This module imports neither capstone nor Unicorn: it names their modes, and their one importer
each looks them up (kuprobe/insn.py, kuprobe/model/emu.py), so ``import kuprobe`` works on any
host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from kuprobe.errors import KuprobeValueError


@dataclass(frozen=True)
class RegLayout:
    """How one arch's ``struct pt_regs`` looks, and which fields the kernel's accessors read."""

    fields: tuple[str, ...]
    ip: str
    sp: str
    retval: str
    # regs_get_kernel_argument(): the register arguments, in order. Past them the kernel reads
    # the stack (x86) or gives 0 (arm64): ``kernel_args_spill``.
    kernel_args: tuple[str, ...]
    kernel_args_spill: bool
    # The user-space ABI's integer argument registers (System V psABI); () when every argument
    # is on the stack above the return address (i386 cdecl).
    user_args: tuple[str, ...]


@dataclass(frozen=True)
class ArchInfo:
    """Everything kuprobe knows of one arch, each fact with its source."""

    name: str  # kuprobe's name: "x86_64", "i386", "arm64"
    uname: tuple[str, ...]  # what `uname -m` prints on a kernel of this arch
    elf_machine: str  # e_machine as pyelftools names it
    triplet: str  # the multiarch library directory: /usr/lib/<triplet> (Debian's, glibc's)
    bits: int
    # Every instruction starts at a multiple of this; a probe elsewhere is EINVAL (arm64).
    insn_align: int
    regs: RegLayout
    # Host kernels of this arch run user programs of these arches (x86_64: IA32 emulation).
    runs: tuple[str, ...]
    # The syscalls the live backend makes itself, by number (the C library wraps neither).
    syscalls: Mapping[str, int]
    # capstone's and Unicorn's (arch, mode) constants by name, looked up by their one
    # importer each (kuprobe/insn.py, kuprobe/model/emu.py)
    capstone: tuple[str, str]
    unicorn: tuple[str, str]

    @property
    def word_bytes(self) -> int:
        return self.bits // 8


def _syscalls(**numbers: int) -> Mapping[str, int]:
    return MappingProxyType(dict(numbers))


X86_64 = ArchInfo(
    name="x86_64",
    uname=("x86_64",),
    elf_machine="EM_X86_64",
    triplet="x86_64-linux-gnu",
    bits=64,
    insn_align=1,  # variable length: boundaries are decoded (EILSEQ inside one)
    # arch/x86/include/asm/ptrace.h: struct pt_regs (CONFIG_X86_64), regs_get_kernel_argument()
    regs=RegLayout(
        fields=(
            *("r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8"),
            *("ax", "cx", "dx", "si", "di", "orig_ax", "ip", "cs", "flags", "sp", "ss"),
        ),
        ip="ip",
        sp="sp",
        retval="ax",
        kernel_args=("di", "si", "dx", "cx", "r8", "r9"),
        kernel_args_spill=True,
        user_args=("di", "si", "dx", "cx", "r8", "r9"),  # System V AMD64 psABI
    ),
    runs=("x86_64", "i386"),
    # arch/x86/entry/syscalls/syscall_64.tbl
    syscalls=_syscalls(perf_event_open=298, bpf=321, membarrier=324),
    capstone=("CS_ARCH_X86", "CS_MODE_64"),
    unicorn=("UC_ARCH_X86", "UC_MODE_64"),
)

I386 = ArchInfo(
    name="i386",
    uname=("i386", "i486", "i586", "i686"),
    elf_machine="EM_386",
    triplet="i386-linux-gnu",
    bits=32,
    insn_align=1,
    # arch/x86/include/asm/ptrace.h: struct pt_regs (CONFIG_X86_32); the kernel is built with
    # -mregparm=3, so regs_get_kernel_argument() reads ax, dx, cx and then the stack.
    regs=RegLayout(
        fields=(
            *("bx", "cx", "dx", "si", "di", "bp", "ax", "ds", "es", "fs", "gs", "orig_ax"),
            *("ip", "cs", "flags", "sp", "ss"),
        ),
        ip="ip",
        sp="sp",
        retval="ax",
        kernel_args=("ax", "dx", "cx"),
        kernel_args_spill=True,
        user_args=(),  # System V i386 psABI (cdecl): every argument on the stack
    ),
    runs=("i386",),
    # arch/x86/entry/syscalls/syscall_32.tbl
    syscalls=_syscalls(perf_event_open=336, bpf=357, membarrier=375),
    capstone=("CS_ARCH_X86", "CS_MODE_32"),
    unicorn=("UC_ARCH_X86", "UC_MODE_32"),
)

ARM64 = ArchInfo(
    name="arm64",
    uname=("aarch64", "arm64"),
    elf_machine="EM_AARCH64",
    triplet="aarch64-linux-gnu",
    bits=64,
    insn_align=4,  # arch/arm64/include/asm/insn.h: AARCH64_INSN_SIZE
    # arch/arm64/include/uapi/asm/ptrace.h: struct user_pt_regs { regs[31], sp, pc, pstate };
    # arch/arm64/include/asm/ptrace.h: regs_get_kernel_argument() reads x0..x7, then 0.
    regs=RegLayout(
        fields=(*(f"x{i}" for i in range(31)), "sp", "pc", "pstate"),
        ip="pc",
        sp="sp",
        retval="x0",
        kernel_args=tuple(f"x{i}" for i in range(8)),
        kernel_args_spill=False,
        user_args=tuple(f"x{i}" for i in range(8)),  # AAPCS64
    ),
    runs=("arm64",),
    # include/uapi/asm-generic/unistd.h (arm64 uses the generic table)
    syscalls=_syscalls(perf_event_open=241, bpf=280, membarrier=283),
    capstone=("CS_ARCH_ARM64", "CS_MODE_ARM"),
    unicorn=("UC_ARCH_ARM64", "UC_MODE_ARM"),
)

ARCHES: Mapping[str, ArchInfo] = MappingProxyType({a.name: a for a in (X86_64, I386, ARM64)})


def arch_info(name: str) -> ArchInfo:
    """The record for ``name``; KuprobeValueError naming the known arches otherwise."""
    try:
        return ARCHES[name]
    except KeyError:
        raise KuprobeValueError(f"unknown arch {name!r}; known: {', '.join(ARCHES)}") from None


def arch_of_machine(machine: str) -> ArchInfo | None:
    """The record for what ``uname -m`` prints, or None for an arch kuprobe does not know."""
    for a in ARCHES.values():
        if machine in a.uname:
            return a
    return None


def host_machine() -> str:
    return os.uname().machine


def host_arch() -> ArchInfo | None:
    """This machine's arch, or None where kuprobe knows none (the model still works there)."""
    return arch_of_machine(host_machine())


def elf_arch(elf_machine: str, bits: int) -> ArchInfo | None:
    """The record for an ELF header's e_machine and class."""
    for a in ARCHES.values():
        if a.elf_machine == elf_machine and a.bits == bits:
            return a
    return None


__all__ = [
    "ARCHES",
    "ARM64",
    "I386",
    "X86_64",
    "ArchInfo",
    "RegLayout",
    "arch_info",
    "arch_of_machine",
    "elf_arch",
    "host_arch",
]
