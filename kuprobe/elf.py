"""ELF files through pyelftools, opened once: arch, PIE, symbols, file offsets, USDT notes."""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass
from functools import cached_property, lru_cache

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection, SymbolTableSection

from kuprobe.arch import ARCHES, elf_arch
from kuprobe.errors import ProbeError


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int  # virtual address (st_value)
    size: int
    type: str  # STT_FUNC, STT_OBJECT …


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD program header."""

    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int  # PF_X=1, PF_W=2, PF_R=4

    @property
    def executable(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True)
class UsdtNote:
    """One ``stapsdt`` note: a USDT probe site and its semaphore."""

    provider: str
    name: str
    pc: int  # virtual address of the probe site
    semaphore: int  # virtual address of the semaphore, 0 if none
    args: str


class ElfImage:
    """An ELF file read once: what uprobes and the model need of it."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fh = open(path, "rb")  # noqa: SIM115 (kept open for lazy reads)
        except FileNotFoundError as e:
            raise ProbeError(errno.ENOENT, f"{path}: no such file", hint="check the path") from e
        except IsADirectoryError as e:
            raise ProbeError(errno.EISDIR, f"{path}: is a directory, not an ELF file") from e
        except PermissionError as e:
            raise ProbeError(errno.EACCES, f"{path}: cannot read it") from e
        try:
            self.elf = ELFFile(self._fh)
        except ELFError as e:
            self._fh.close()
            raise ProbeError(errno.ENOEXEC, f"{path}: not an ELF file ({e})") from e
        st = os.fstat(self._fh.fileno())
        self.inode = (st.st_dev, st.st_ino)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ElfImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @cached_property
    def arch(self) -> str:
        machine, bits = self.elf["e_machine"], int(self.elf.elfclass)
        info = elf_arch(machine, bits)
        if info is None:
            raise ProbeError(
                errno.ENOEXEC,
                f"{self.path}: {machine} ({bits}-bit) is not an arch kuprobe knows "
                f"({', '.join(ARCHES)})",
            )
        return info.name

    @property
    def bits(self) -> int:
        return int(self.elf.elfclass)

    @cached_property
    def is_pie(self) -> bool:
        """ET_DYN: position independent (a PIE executable or a shared object)."""
        return bool(self.elf["e_type"] == "ET_DYN")

    @property
    def entry(self) -> int:
        return int(self.elf["e_entry"])

    @cached_property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(
            Segment(
                vaddr=s["p_vaddr"],
                offset=s["p_offset"],
                filesz=s["p_filesz"],
                memsz=s["p_memsz"],
                flags=s["p_flags"],
            )
            for s in self.elf.iter_segments()
            if s["p_type"] == "PT_LOAD"
        )

    @cached_property
    def symbols(self) -> dict[str, Symbol]:
        """Defined symbols of .symtab, else .dynsym (a stripped file keeps only the latter)."""
        found: dict[str, Symbol] = {}
        for secname in (".dynsym", ".symtab"):  # .symtab wins where both name a symbol
            sec = self.elf.get_section_by_name(secname)
            if not isinstance(sec, SymbolTableSection):
                continue
            for sym in sec.iter_symbols():
                if not sym.name or sym["st_shndx"] == "SHN_UNDEF":
                    continue
                kind = sym["st_info"]["type"]
                if kind not in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE", "STT_GNU_IFUNC"):
                    continue
                found[sym.name] = Symbol(sym.name, sym["st_value"], sym["st_size"], kind)
        return found

    def symbol(self, name: str) -> Symbol:
        try:
            return self.symbols[name]
        except KeyError:
            raise ProbeError(
                errno.ENOENT,
                f"{self.path}: no symbol {name!r}",
                hint="list symbols with `nm -D` / `nm`; a stripped file keeps only .dynsym, "
                "or probe a file offset instead",
            ) from None

    def vaddr_to_offset(self, vaddr: int) -> int:
        """File offset of a virtual address: ``vaddr - p_vaddr + p_offset`` of its PT_LOAD."""
        for seg in self.segments:
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return vaddr - seg.vaddr + seg.offset
        raise ProbeError(errno.EINVAL, f"{self.path}: address {vaddr:#x} is in no loaded segment")

    def offset_to_vaddr(self, offset: int) -> int:
        for seg in self.segments:
            if seg.offset <= offset < seg.offset + seg.filesz:
                return offset - seg.offset + seg.vaddr
        raise ProbeError(errno.EINVAL, f"{self.path}: file offset {offset:#x} is not loaded")

    def executable_offset(self, offset: int) -> bool:
        return any(s.executable and s.offset <= offset < s.offset + s.filesz for s in self.segments)

    def read(self, offset: int, size: int) -> bytes:
        self._fh.seek(offset)
        return self._fh.read(size)

    def read_vaddr(self, vaddr: int, size: int) -> bytes:
        return self.read(self.vaddr_to_offset(vaddr), size)

    @cached_property
    def code_starts(self) -> tuple[tuple[int, int], ...]:
        """(vaddr, size or 0 if unknown) of every place the file says an instruction starts:
        function and untyped symbols of .symtab and .dynsym, and the first instruction of
        every function .eh_frame describes (its FDEs, kept by stripped files too)."""
        starts: dict[int, int] = {}
        for sym in self.symbols.values():
            if sym.type in ("STT_FUNC", "STT_NOTYPE", "STT_GNU_IFUNC") and self._in_text(sym.value):
                starts[sym.value] = max(starts.get(sym.value, 0), sym.size)
        for start, size in self._fde_ranges():
            starts[start] = max(starts.get(start, 0), size)
        return tuple(sorted(starts.items()))

    def _fde_ranges(self) -> list[tuple[int, int]]:
        from elftools.dwarf.callframe import FDE

        if self.elf.get_section_by_name(".eh_frame") is None:
            return []
        try:
            dwarf = self.elf.get_dwarf_info(relocate_dwarf_sections=False)
            if not dwarf.has_EH_CFI():
                return []
            return [
                (int(e.header["initial_location"]), int(e.header["address_range"]))
                for e in dwarf.EH_CFI_entries()
                if isinstance(e, FDE)
            ]
        except (ELFError, ValueError, KeyError, struct.error):  # a damaged .eh_frame: no starts
            return []

    def _in_text(self, vaddr: int) -> bool:
        return any(s.executable and s.vaddr <= vaddr < s.vaddr + s.filesz for s in self.segments)

    def start_before(self, vaddr: int) -> tuple[int, int] | None:
        """The known instruction start to decode ``vaddr`` from: the nearest one whose extent
        holds it, else the nearest one at or before it; None if the file names none."""
        best: tuple[int, int] | None = None
        for start, size in self.code_starts:
            if start > vaddr:
                break
            if size and vaddr < start + size:
                best = (start, size)  # the innermost (latest) start that holds vaddr
            elif best is None or not (best[1] and vaddr < best[0] + best[1]):
                best = (start, size)
        return best

    def symbol_at(self, vaddr: int) -> Symbol | None:
        """The function containing ``vaddr``, if any."""
        for sym in self.symbols.values():
            if sym.type == "STT_FUNC" and sym.value <= vaddr < sym.value + max(sym.size, 1):
                return sym
        return None

    @cached_property
    def usdt_notes(self) -> tuple[UsdtNote, ...]:
        """The ``.note.stapsdt`` entries (systemtap's SDT format, v3: pc, base, semaphore,
        then provider, name and arguments). A file prelinked since it was built has moved
        ``.stapsdt.base``: pc and semaphore move with it (as libbpf's usdt.c does)."""
        notes: list[UsdtNote] = []
        word = "<Q" if self.bits == 64 else "<I"
        w = 8 if self.bits == 64 else 4
        base_sec = self.elf.get_section_by_name(".stapsdt.base")
        for sec in self.elf.iter_sections():
            if not isinstance(sec, NoteSection) or sec.name != ".note.stapsdt":
                continue
            for note in sec.iter_notes():
                # pyelftools names type 3 after the GNU note it is for another owner
                if note["n_name"] != "stapsdt" or note["n_type"] not in (
                    3,
                    "NT_STAPSDT",
                    "NT_GNU_BUILD_ID",
                ):
                    continue
                desc = note["n_desc"]
                raw = desc.encode("latin-1") if isinstance(desc, str) else bytes(desc)
                pc, base, sem = struct.unpack_from(word[0] + 3 * word[1], raw, 0)
                if base_sec is not None and base:
                    bias = base_sec["sh_addr"] - base
                    pc, sem = pc + bias, (sem + bias if sem else 0)
                provider, name, args = raw[3 * w :].split(b"\0")[:3]
                notes.append(UsdtNote(provider.decode(), name.decode(), pc, sem, args.decode()))
        return tuple(notes)


@lru_cache(maxsize=32)
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
