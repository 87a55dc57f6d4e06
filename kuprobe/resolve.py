"""Where a probe lands, decided once for the live backend, the model and the command's specs.

A uprobe: (inode, file offset) from a path and symbol+offset or a file offset. The path may be
a library name (``libc``, ``c``, ``libssl.so.3``): ``find_library`` finds it as the dynamic
linker would (elf/dl-load.c: _dl_map_object(): /etc/ld.so.cache, then the default directories)
or, for one process, among the files that process has mapped, under its own root
(``/proc/PID/root``: a container's file, not the host's). As the kernel
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
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from elftools.common.exceptions import ELFError

from kuprobe.arch import ARCHES, host_arch
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
    real = path if path.startswith("/proc/") else os.path.realpath(path)
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
    except ProbeError:
        raise  # ElfImage's own refusal (no such file, not an ELF …)
    except OSError as e:
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


# --- library names -----------------------------------------------------------------------

LD_SO_CACHE = "/etc/ld.so.cache"
# sysdeps/generic/dl-cache.h: CACHEMAGIC_VERSION_NEW
_CACHE_MAGIC = b"glibc-ld.so.cache1.1"
# sysdeps/generic/dl-cache.h: the directories searched after the cache (and ldconfig's own).
DEFAULT_LIB_DIRS = (
    "/lib/{triplet}",
    "/usr/lib/{triplet}",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
)


def is_library_name(path: str) -> bool:
    """A bare name (``libc``, ``c``, ``libssl.so.3``) rather than a path: no ``/`` in it."""
    return "/" not in path


def _stem_matches(name: str) -> Callable[[str], bool]:
    """Which file names ``name`` means: ``c`` and ``libc`` mean ``libc.so`` and
    ``libc.so.N``; ``libssl.so`` means it and ``libssl.so.N``; ``libssl.so.3`` only itself."""
    stem = name if name.startswith("lib") or ".so" in name else f"lib{name}"
    if ".so" not in stem:
        stem += ".so"

    def matches(base: str) -> bool:
        if base == name:  # the file's own name (a program: "python3.11", "bash")
            return True
        return base == stem or (base.startswith(stem + ".") and base[len(stem) + 1 :][:1].isdigit())

    return matches


def ld_so_cache(path: str = LD_SO_CACHE) -> list[str]:
    """The library paths listed in the dynamic linker's cache, in its order (the new format,
    sysdeps/generic/dl-cache.h: struct cache_file_new and file_entry_new; ``ldconfig -p``
    prints the same list)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    base = data.find(_CACHE_MAGIC)
    if base < 0:
        return []
    nlibs, _len_strings = struct.unpack_from("<II", data, base + len(_CACHE_MAGIC))
    entries = base + 48  # the header: magic+version, nlibs, len_strings, flags, pad, ext, unused
    out: list[str] = []
    for i in range(nlibs):
        _flags, _key, value = struct.unpack_from("<iII", data, entries + 24 * i)
        end = data.find(b"\0", value)
        if 0 < value < len(data) and end > value:
            out.append(data[value:end].decode("utf-8", "replace"))
    return out


def _mapped_files(pid: int) -> dict[str, str]:
    """The files process ``pid`` has mapped (/proc/PID/maps), each with a path that opens
    that very file from here: ``/proc/PID/root`` + its name when that is the same inode (a
    container: maps names it as the container sees it), else ``/proc/PID/map_files/RANGE``
    (a chroot, whose maps name it as we see it, or a file since renamed)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ProbeError(errno.ESRCH, f"no process {pid}") from None
    except PermissionError:
        raise ProbeError(
            errno.EACCES, f"cannot read /proc/{pid}/maps", hint="run as root"
        ) from None
    out: dict[str, str] = {}
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/") or parts[5].endswith(" (deleted)"):
            continue
        name, inode = parts[5], int(parts[4])
        if name in out:
            continue
        inside = f"/proc/{pid}/root{name}"
        try:
            same = os.stat(inside).st_ino == inode
        except OSError:
            same = False
        out[name] = inside if same else f"/proc/{pid}/map_files/{parts[0]}"
    return out


def _elf_arch(path: str) -> str | None:
    try:
        return open_image(path).arch
    except ProbeError:
        return None


def _distinct(paths: Iterable[str]) -> list[str]:
    """``paths`` that exist, one per file (a symlink and its target are one file)."""
    seen: set[tuple[int, int]] = set()
    out: list[str] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            out.append(p)
    return out


def _program_on_path(name: str) -> str | None:
    """The first ELF executable called ``name`` on PATH (a shell-script shim is skipped)."""
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            try:
                with open(candidate, "rb") as f:
                    if f.read(4) == b"\x7fELF":
                        return candidate
            except OSError:
                continue
    return None


def find_library(
    name: str,
    *,
    pid: int | None = None,
    arch: str | None = None,
    cache: str = LD_SO_CACHE,
    dirs: Sequence[str] | None = None,
) -> str:
    """The file a library name means, as the dynamic linker would find it.

    Without ``pid``: the entries of /etc/ld.so.cache whose name matches, else the default
    directories; of those, the ones built for ``arch`` (the host's by default: this machine
    also keeps i386 and x32 C libraries). With ``pid``: the matching files that process has
    mapped, opened through ``/proc/PID/root`` (so a container's library is the container's
    file). A name may also be a program's: the process's own file, or one on PATH (before
    a library whose name only starts with it: "python3.11" is the program, not
    libpython3.11.so.1.0). No match, or several different files, is ``ENOENT`` listing what
    was found.
    ``cache`` and ``dirs`` replace the linker's cache and default directories.
    """
    if not name or "\0" in name:
        raise ProbeError(errno.EINVAL, "a library name is empty")
    matches = _stem_matches(name)
    if pid is not None:
        mapped = _mapped_files(pid)
        # the file's own name first (a program: "python3.11"), then library names
        hits = [p for p in mapped if os.path.basename(p) == name] or [
            p for p in mapped if matches(os.path.basename(p))
        ]
        found = _distinct(mapped[p] for p in hits)
        if len(found) == 1:
            return found[0]
        libs = sorted({os.path.basename(p) for p in mapped if ".so" in os.path.basename(p)})
        if not found:
            raise ProbeError(
                errno.ENOENT,
                f"process {pid} has no library {name!r} mapped",
                hint=f"it maps: {', '.join(libs) or 'no libraries'}",
            )
        raise ProbeError(
            errno.ENOENT,
            f"{name!r} is ambiguous in process {pid}: {', '.join(hits)}",
            hint="give the file name (e.g. libssl.so.3) or a path",
        )
    want = arch or (host.name if (host := host_arch()) is not None else None)
    cached = [p for p in ld_so_cache(cache) if matches(os.path.basename(p))]
    exact = [p for p in cached if os.path.basename(p) == name]
    if not exact and (program := _program_on_path(name)) is not None:
        return program  # a program on PATH ("bash", "python3.11"), as bpftrace's uprobe:bash:
    candidates = _distinct(exact or cached)
    where = cache
    if not candidates:
        triplet = ARCHES[want].triplet if want is not None and want in ARCHES else ""
        if dirs is None:
            dirs = [d.format(triplet=triplet) for d in DEFAULT_LIB_DIRS if triplet or "{" not in d]
        listed: list[str] = []
        for d in dirs:
            try:
                listed += [os.path.join(d, f) for f in sorted(os.listdir(d)) if matches(f)]
            except OSError:
                continue
        candidates = _distinct(listed)
        where = ", ".join(dirs)
    fitting = [p for p in candidates if want is None or _elf_arch(p) == want]
    if len(fitting) == 1:
        return fitting[0]
    if not fitting:
        others = f" (only for other arches: {', '.join(candidates)})" if candidates else ""
        raise ProbeError(
            errno.ENOENT,
            f"no library {name!r} for {want or 'this machine'} in {where}{others}",
            hint="give the path of the file, or install the library",
        )
    raise ProbeError(
        errno.ENOENT,
        f"{name!r} is ambiguous: {', '.join(fitting)}",
        hint="give the file name with its version (e.g. libssl.so.3) or a path",
    )


def find_target(path: str, *, pid: int | None = None, arch: str | None = None) -> str:
    """A uprobe's file: ``path`` itself, or the library that a bare name means."""
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise ProbeError(errno.EINVAL, "a Uprobe needs the path of an executable file")
    path = str(path)
    return find_library(path, pid=pid, arch=arch) if is_library_name(path) else path


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
