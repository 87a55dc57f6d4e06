"""Where a probe lands, decided once for the live backend, the model and the command's specs.

A uprobe: (inode, file offset) from a path and symbol+offset or a file offset. As the kernel
does for kprobes (kernel/kprobes.c: _kprobe_addr(), check_kprobe_address_safe() and
arch/x86/kernel/kprobes/core.c: can_probe()), a symbol+offset must stay inside the symbol and
fall on an instruction boundary decoded from its start. A kprobe: symbol_name (+ offset) or
addr, checked before either backend looks the symbol up.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import stat
import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from elftools.common.exceptions import ELFError

from kuprobe.arch import ARCHES
from kuprobe.elf import ElfImage
from kuprobe.errors import ProbeError
from kuprobe.insn import is_boundary

# What a C or assembler symbol may be called (GNU as: letters, digits, _ . $; @ for versions).
SYMBOL_RE = re.compile(r"^[A-Za-z_.$][A-Za-z0-9_.$@]*$")


@dataclass(frozen=True)
class UprobeTarget:
    path: str  # absolute, symlinks resolved
    inode: tuple[int, int]
    offset: int  # file offset of the probed instruction
    arch: str  # of the probed file: the trapped task's register layout
    vaddr: int  # the link-time virtual address (before any PIE load bias)
    image: ElfImage


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
    except OSError as e:
        raise ProbeError(e.errno or errno.EINVAL, f"{_short(path)}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        # kernel/trace/trace_uprobe.c: __trace_uprobe_create() refuses what is not d_is_reg()
        # (and opening a FIFO to read its ELF header would block forever)
        raise ProbeError(errno.EINVAL, f"{_short(path)}: not a regular file")
    try:
        return _image(real, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError as e:
        if isinstance(e, ProbeError):
            raise
        raise ProbeError(e.errno or errno.EIO, f"{_short(path)}: {e.strerror}") from None


def _short(path: str) -> str:
    return path if len(path) <= 200 else f"{path[:100]}…{path[-60:]} ({len(path)} characters)"


def as_path(path: object) -> str:
    """A str or bytes path or os.PathLike as the str the kernel gets."""
    if isinstance(path, bytes | os.PathLike):
        path = os.fsdecode(path)
    if not isinstance(path, str) or not path:
        raise ProbeError(
            errno.EINVAL,
            f"a Uprobe needs the path of an executable file, not {path!r}",
        )
    if "\0" in path:
        raise ProbeError(errno.EINVAL, f"{path!r}: a path cannot hold a NUL byte")
    return path


def check_kprobe_target(p: Any) -> tuple[str | None, int]:
    """kernel/kprobes.c: _kprobe_addr(): a kprobe names symbol_name (+ offset) or addr, not
    both and not neither. Returns (symbol_name, offset) or (None, addr), each checked."""
    if (p.symbol_name is None) == (p.addr is None):
        raise ProbeError(
            errno.EINVAL,
            "give a kprobe either symbol_name (+ offset) or addr, not "
            + ("both" if p.symbol_name is not None else "neither"),
            probe=p,
        )
    if p.symbol_name is not None:
        return check_symbol_name(p.symbol_name), check_offset(p.offset, "offset")
    if p.offset:
        raise ProbeError(errno.EINVAL, "offset goes with symbol_name, not addr", probe=p)
    return None, check_offset(p.addr, "addr")


def resolve_uprobe(
    path: object,
    *,
    symbol_name: str | None,
    offset: int | None,
    runs: Collection[str] | None = None,
    where: str = "this kernel",
    unsafe: bool = False,
) -> UprobeTarget:
    """The (inode, file offset) a uprobe on ``path`` names, or the kernel's error.

    ``runs``: the arches the caller can run (the host kernel's, or the model's); ``None``
    accepts any arch kuprobe knows. ``where`` names the caller in that error. ``unsafe``:
    accept a raw file offset kuprobe cannot prove to be an instruction start.
    """
    path = as_path(path)
    real = os.path.realpath(path) if len(path) < 4096 else path
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
