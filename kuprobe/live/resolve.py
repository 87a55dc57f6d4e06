"""Where a uprobe goes: (inode, file offset) from a path and symbol+offset or a file offset.

As the kernel does for kprobes (kernel/kprobes.c: _kprobe_addr(), check_kprobe_address_safe()
and arch/x86/kernel/kprobes/core.c: can_probe()), a symbol+offset must stay inside the symbol
and fall on an instruction boundary decoded from its start.
"""

from __future__ import annotations

import errno
import functools
import os
import re
from dataclasses import dataclass

from kuprobe.elf import ElfImage
from kuprobe.errors import ProbeError
from kuprobe.insn import is_boundary

# What a C or assembler symbol may be called (GNU as: letters, digits, _ . $; @ for versions).
SYMBOL_RE = re.compile(r"^[A-Za-z_.$][A-Za-z0-9_.$@]*$")
# The programs a host kernel (uname -m) runs, by kuprobe's arch names (x86_64 runs i386 ones
# through IA32 emulation; kuprobe has no arm32 for an arm64 kernel's compat tasks).
SUPPORTED_LIVE_ARCHES = {"x86_64": ("x86_64", "i386"), "aarch64": ("arm64",)}


@dataclass(frozen=True)
class UprobeTarget:
    path: str  # absolute, symlinks resolved
    inode: tuple[int, int]
    offset: int  # file offset of the probed instruction
    arch: str  # of the probed file: the trapped task's register layout
    vaddr: int  # the link-time virtual address (before any PIE load bias)


def check_symbol_name(name: object, what: str = "symbol_name") -> str:
    if not isinstance(name, str) or not SYMBOL_RE.fullmatch(name) or len(name) > 512:
        raise ProbeError(
            errno.EINVAL,
            f"{what} {name!r} is not a symbol name (letters, digits, _ . $ @)",
        )
    return name


def check_offset(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProbeError(errno.EINVAL, f"{what} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ProbeError(errno.EINVAL, f"{what} {value} is negative")
    return value


@functools.lru_cache(maxsize=32)
def _image(real: str, dev: int, ino: int, mtime_ns: int, size: int) -> ElfImage:
    """One parsed ElfImage per file version: registering 20 probes on a file reads its
    symbol table once. (The file stays open while cached.)"""
    return ElfImage(real)


def open_image(path: str) -> ElfImage:
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise ProbeError(errno.ENOENT, f"{path}: no such file", hint="check the path") from None
    return _image(real, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def resolve_uprobe(
    path: str, *, symbol_name: str | None, offset: int | None, host_arch: str
) -> UprobeTarget:
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise ProbeError(errno.EINVAL, "a Uprobe needs the path of an executable file")
    real = os.path.realpath(path)
    elf = open_image(real)
    arch = elf.arch
    if arch not in SUPPORTED_LIVE_ARCHES.get(host_arch, ()):
        raise ProbeError(
            errno.ENOEXEC,
            f"{path} is an {arch} program; this {host_arch} kernel runs only "
            f"{' and '.join(SUPPORTED_LIVE_ARCHES.get(host_arch, ()))} programs",
            hint="use kuprobe.model.Machine to run it in the model",
        )
    if symbol_name is not None:
        check_symbol_name(symbol_name)
        off = check_offset(offset or 0, "offset")
        sym = elf.symbol(symbol_name)
        if sym.size and off >= sym.size:
            raise ProbeError(
                errno.EINVAL,
                f"{symbol_name}+{off:#x} is past the end of {symbol_name} ({sym.size:#x} bytes)",
            )
        vaddr = sym.value + off
        if off and sym.size:
            code = elf.read_vaddr(sym.value, sym.size)
            if not is_boundary(arch, code, off):
                raise ProbeError(
                    errno.EILSEQ,
                    f"{symbol_name}+{off:#x} is inside an instruction",
                    hint=f"disassemble with `objdump -d --disassemble={symbol_name} {path}`",
                )
        file_off = elf.vaddr_to_offset(vaddr)
    else:
        if offset is None:
            raise ProbeError(errno.EINVAL, "a Uprobe needs symbol_name, offset, or both")
        file_off = check_offset(offset, "offset")
        vaddr = elf.offset_to_vaddr(file_off)
        within = elf.symbol_at(vaddr)
        if within is not None and vaddr != within.value:
            code = elf.read_vaddr(within.value, within.size)
            if not is_boundary(arch, code, vaddr - within.value):
                raise ProbeError(
                    errno.EILSEQ,
                    f"file offset {file_off:#x} is inside an instruction "
                    f"({within.name}+{vaddr - within.value:#x})",
                )
    if not elf.executable_offset(file_off):
        raise ProbeError(
            errno.EINVAL, f"{path}: file offset {file_off:#x} is not in executable code"
        )
    return UprobeTarget(real, elf.inode, file_off, arch, vaddr)
