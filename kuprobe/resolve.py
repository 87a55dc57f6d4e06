"""Where a uprobe lands: its (inode, file offset), proved to start an instruction.

From a path (or a library name, ``libraries.find_library``) and symbol+offset or a file
offset, decided once for the live backend, the model and the command's specs. As the kernel
does for kprobes (kernel/kprobes.c: _kprobe_addr(), check_kprobe_address_safe() and
arch/x86/kernel/kprobes/core.c: can_probe()), a symbol+offset must stay inside the symbol and
fall on an instruction boundary decoded from its start; a raw file offset must start an
instruction decoded from the nearest function start the file gives (unless ``unsafe``).
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Collection
from dataclasses import dataclass

from elftools.common.exceptions import ELFError

from kuprobe.arch import ARCHES
from kuprobe.elf import ElfImage, _short, open_image
from kuprobe.errors import ProbeError
from kuprobe.insn import is_boundary
from kuprobe.libraries import find_target
from kuprobe.validate import as_path, check_offset, check_symbol_name


@dataclass(frozen=True)
class UprobeTarget:
    path: str  # absolute, symlinks resolved
    inode: tuple[int, int]
    offset: int  # file offset of the probed instruction
    arch: str  # of the probed file: the trapped task's register layout
    vaddr: int  # the link-time virtual address (before any PIE load bias)
    image: ElfImage


def resolve_uprobe(
    path: object,
    *,
    symbol_name: str | None,
    offset: int | None,
    runs: Collection[str] | None = None,
    where: str = "this kernel",
    unsafe: bool = False,
    pid: int | None = None,
) -> UprobeTarget:
    """The (inode, file offset) a uprobe on ``path`` names, or the kernel's error.

    ``path`` may be a library name (``find_library``; through process ``pid``'s mappings if
    given). ``runs``: the arches the caller can run (the host kernel's, or the model's);
    ``None`` accepts any arch kuprobe knows. ``where`` names the caller in that error.
    ``unsafe``: accept a raw file offset kuprobe cannot prove to be an instruction start.
    """
    path = find_target(as_path(path), pid=pid)
    # /proc/PID/maps names files canonically; resolving /proc/PID/root itself would leave the
    # process's root (its readlink is "/" for another mount namespace's root).
    keep = path.startswith("/proc/") or len(path) >= 4096
    real = path if keep else os.path.realpath(path)
    elf = open_image(real)
    try:
        return _resolve(elf, path, real, symbol_name, offset, runs, where, unsafe)
    except (ELFError, struct.error, ValueError, KeyError, AssertionError) as e:
        raise ProbeError(
            errno.ENOEXEC, f"{_short(path)}: a damaged ELF file ({type(e).__name__}: {e})"
        ) from None


def _resolve(
    elf: ElfImage,
    path: str,
    real: str,
    symbol_name: str | None,
    offset: int | None,
    runs: Collection[str] | None,
    where: str,
    unsafe: bool,
) -> UprobeTarget:
    arch = elf.arch
    if runs is not None and arch not in runs:
        raise ProbeError(
            errno.ENOEXEC,
            f"{path} is an {arch} program; {where} runs only {' and '.join(runs) or 'no'} programs",
            hint="use kuprobe.model.Machine to run it in the model",
        )
    if symbol_name is not None:
        check_symbol_name(symbol_name)
        off = check_offset(offset or 0, "offset")
        sym = elf.symbol(symbol_name)
        if sym.size and off >= sym.size and not unsafe:
            raise ProbeError(
                errno.EINVAL,
                f"{symbol_name}+{off:#x} is past the end of {symbol_name} ({sym.size:#x} bytes)",
            )
        vaddr = sym.value + off
        if off and not unsafe and vaddr % ARCHES[arch].insn_align == 0:
            # decoded from the symbol's start, as the kernel does for kprobes (can_probe())
            code = elf.read_vaddr(sym.value, sym.size or off + MAX_INSN)
            if not is_boundary(arch, code, off):
                raise ProbeError(
                    errno.EILSEQ,
                    f"{symbol_name}+{off:#x} is not an instruction boundary decoded from "
                    f"{symbol_name}",
                    hint=f"disassemble with `objdump -d --disassemble={symbol_name} {path}`; "
                    "Uprobe(..., unsafe=True) probes it anyway",
                )
        file_off = elf.vaddr_to_offset(vaddr)
    else:
        if offset is None:
            raise ProbeError(errno.EINVAL, "a Uprobe needs symbol_name, offset, or both")
        file_off = check_offset(offset, "offset")
        vaddr = elf.offset_to_vaddr(file_off)
    if not elf.executable_offset(file_off):
        raise ProbeError(
            errno.EINVAL, f"{path}: file offset {file_off:#x} is not in executable code"
        )
    align = ARCHES[arch].insn_align
    if vaddr % align:
        # arch/arm64/kernel/probes/uprobes.c: arch_uprobe_analyze_insn() and kprobes.c:
        # arch_prepare_kprobe() refuse an address that is not instruction-aligned: -EINVAL
        raise ProbeError(
            errno.EINVAL,
            f"{path}: {vaddr:#x} is not {align}-byte aligned ({arch} instructions are)",
        )
    if symbol_name is None and not unsafe:
        check_boundary(elf, path, arch, vaddr, file_off)
    return UprobeTarget(real, elf.inode, file_off, arch, vaddr, elf)


MAX_INSN = 16  # arch/x86/include/asm/insn.h: MAX_INSN_SIZE (arm64's are 4)


def check_boundary(elf: ElfImage, path: str, arch: str, vaddr: int, file_off: int) -> None:
    """A raw file offset must be provably an instruction start: decoded from the nearest
    function start the file gives (.symtab, .dynsym, .eh_frame), as bpftrace requires
    unless --unsafe."""
    start = elf.start_before(vaddr)
    where = f"file offset {file_off:#x}"
    if start is None:
        raise ProbeError(
            errno.EILSEQ,
            f"{path}: kuprobe cannot tell whether {where} starts an instruction (the file "
            "names no function before it: no symbols, no .eh_frame)",
            hint="Uprobe(..., unsafe=True) probes it anyway (bpftrace's --unsafe): a probe "
            "inside an instruction corrupts the program",
        )
    begin, size = start
    if begin == vaddr:
        return
    code = elf.read_vaddr(
        begin, size if size and vaddr < begin + size else vaddr - begin + MAX_INSN
    )
    if not is_boundary(arch, code, vaddr - begin):
        sym = elf.symbol_at(vaddr)
        near = (
            f" ({sym.name}+{vaddr - sym.value:#x})"
            if sym
            else f" (start {begin:#x}+{vaddr - begin:#x})"
        )
        raise ProbeError(
            errno.EILSEQ,
            f"{where} is inside an instruction{near}, decoded from the function start at "
            f"{begin:#x}",
            hint="Uprobe(..., unsafe=True) probes it anyway (bpftrace's --unsafe)",
        )
