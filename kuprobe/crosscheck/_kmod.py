"""The kprobe scenarios' test module in the running kernel: loaded, called, read back.

The module (kuprobe/targets/kmod) is loaded, its functions are called from user space, and the
bytes it runs are read back as an ELF the model loads.

The model must run the code the kernel runs. A module's text changes at load time: relocations,
the ``call __fentry__`` at each entry made a 5-byte NOP (kernel/trace/ftrace.c:
ftrace_module_init()), ``jmp __x86_return_thunk`` made ``ret; int3 …`` when the CPU needs no
return thunk (arch/x86/kernel/alternative.c: apply_returns()), retpolines patched
(apply_retpolines()). So ``running_image()`` reads the module's pages back from /proc/kcore at
the addresses /sys/module/NAME/sections/ gives, names its functions from the .ko's symbol table
(each at its section's load address, with its size), and adds the kernel text pages the module
jumps into that are pure code of their own (the ``__x86_indirect_thunk_*`` retpolines a jump
table goes through). ``write_elf()`` lays that out as an ELF64 whose segments sit at the
module's real addresses; ``Machine.load(path, space="kernel")`` runs it as kernel text.
"""

from __future__ import annotations

import os
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from kuprobe.elf import ElfImage
from kuprobe.targets import TargetError
from kuprobe.targets.kmod import DEFAULT_OUT, MODULE

PROC = Path("/proc") / MODULE
SYSMODULE = Path("/sys/module") / MODULE
PAGE = 0x1000
# Kernel code the module's own code may jump into: the retpoline thunks
# (arch/x86/lib/retpoline.S), each self-contained (they end in a ret or jmp *reg).
KERNEL_THUNKS = ("__x86_indirect_thunk_array", "__x86_return_thunk")


def module_ko() -> Path:
    """The built module (tests/targets/build/kmod/, made by
    ``python -m kuprobe.crosscheck.kmod_build``)."""
    ko = DEFAULT_OUT / f"{MODULE}.ko"
    if not ko.is_file():
        raise TargetError(
            f"{ko} is missing: build it on the host with "
            "`python -m kuprobe.crosscheck.kmod_build` (tests/targets/build.sh does)"
        )
    return ko


def ensure_loaded(ko: Path | None = None) -> None:
    """insmod the module unless it is loaded."""
    if SYSMODULE.is_dir() and PROC.exists():
        return
    ko = ko or module_ko()
    done = subprocess.run(["insmod", str(ko)], capture_output=True, text=True, check=False)
    if done.returncode != 0 or not PROC.exists():
        raise TargetError(f"insmod {ko}: {done.stderr.strip() or f'no {PROC}'}")


def call(func: str, *args: int) -> int:
    """``func(*args)`` in the kernel, through /proc/kuprobe_kmod; its signed result."""
    fd = os.open(PROC, os.O_RDWR)
    try:
        os.write(fd, " ".join([func, *map(str, args)]).encode())
        return int(os.read(fd, 64))
    finally:
        os.close(fd)


@dataclass
class ModuleImage:
    """The module as it runs: its pages, its functions, the kernel pages it jumps into."""

    pages: dict[int, tuple[bytes, int]] = field(default_factory=dict)  # page -> (bytes, p_flags)
    symbols: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (addr, size)

    def read(self, addr: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            page, off = addr & ~(PAGE - 1), addr & (PAGE - 1)
            n = min(size, PAGE - off)
            out += self.pages[page][0][off : off + n]
            addr, size = addr + n, size - n
        return bytes(out)

    def function(self, name: str) -> tuple[int, bytes]:
        addr, size = self.symbols[name]
        return addr, self.read(addr, size)

    def write_elf(self, path: Path) -> None:
        write_elf(path, self)

    @classmethod
    def from_elf(cls, path: Path) -> ModuleImage:
        """An image ``write_elf()`` wrote (to run the model where the module is not loaded)."""
        image = cls()
        with ElfImage(str(path)) as elf:
            for seg in elf.segments:
                for off in range(0, seg.filesz, PAGE):
                    page = elf.read(seg.offset + off, PAGE)
                    image.pages[seg.vaddr + off] = (page, seg.flags)
            for sym in elf.symbols.values():
                image.symbols[sym.name] = (sym.value, sym.size)
        return image


def _section_addresses() -> dict[str, int]:
    folder = SYSMODULE / "sections"
    return {p.name: int(p.read_text(), 16) for p in folder.iterdir() if p.is_file()}


def _kallsyms(names: tuple[str, ...]) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in Path("/proc/kallsyms").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] in names:
            found.setdefault(parts[2], int(parts[0], 16))
    return found


def running_image(ko: Path | None = None) -> ModuleImage:
    """The loaded module's running bytes (from /proc/kcore) and symbols (from the .ko)."""
    ko = ko or module_ko()
    bases = _section_addresses()
    image = ModuleImage()
    spans: list[tuple[int, int, int]] = []  # (addr, size, p_flags) of each loaded section
    with ko.open("rb") as f:
        elf = ELFFile(f)
        names = {}
        for i, sec in enumerate(elf.iter_sections()):
            names[i] = sec.name
            flags = sec["sh_flags"]
            loaded = sec.name in bases and not sec.name.startswith(".init")  # init: freed
            if flags & SH_FLAGS.SHF_ALLOC and sec["sh_size"] and loaded:
                p_flags = 4 | (2 if flags & SH_FLAGS.SHF_WRITE else 0)
                p_flags |= 1 if flags & SH_FLAGS.SHF_EXECINSTR else 0
                spans.append((bases[sec.name], sec["sh_size"], p_flags))
        symtab = elf.get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        for sym in symtab.iter_symbols():
            shndx = sym["st_shndx"]
            kind = sym["st_info"]["type"]
            if not sym.name or not isinstance(shndx, int) or kind not in ("STT_FUNC", "STT_NOTYPE"):
                continue
            if names.get(shndx) != ".text":
                continue
            image.symbols[sym.name] = (bases[".text"] + sym["st_value"], sym["st_size"])
    thunks = _kallsyms(KERNEL_THUNKS)
    spans += [(addr, 1, 5) for addr in thunks.values()]
    with ElfImage("/proc/kcore") as kcore:
        for addr, size, p_flags in spans:
            for page in range(addr & ~(PAGE - 1), addr + size, PAGE):
                old = image.pages.get(page)
                data = old[0] if old else kcore.read_vaddr(page, PAGE)
                image.pages[page] = (data, (old[1] if old else 0) | p_flags)
    for name, addr in thunks.items():
        image.symbols.setdefault(name, (addr, 0))
    return image


def write_elf(path: Path, image: ModuleImage) -> None:
    """An ELF64 x86-64 executable: one PT_LOAD per run of pages, at their kernel addresses,
    and a .symtab of the image's functions (absolute symbols)."""
    runs: list[tuple[int, bytearray, int]] = []  # (vaddr, bytes, p_flags)
    for page in sorted(image.pages):
        data, flags = image.pages[page]
        if runs and runs[-1][0] + len(runs[-1][1]) == page and runs[-1][2] == flags:
            runs[-1][1].extend(data)
            continue
        runs.append((page, bytearray(data), flags))
    strtab = bytearray(b"\0")
    symtab = bytearray(b"\0" * 24)
    for name, (addr, size) in sorted(image.symbols.items()):
        symtab += struct.pack("<IBBHQQ", len(strtab), 0x12, 0, 0xFFF1, addr, size)  # FUNC, ABS
        strtab += name.encode() + b"\0"
    shstr = b"\0.symtab\0.strtab\0.shstrtab\0"
    ehsize, phsize, shsize = 64, 56, 64
    offset = PAGE  # headers fit in the first page; each run starts page-aligned in the file
    body = bytearray()
    phdrs = bytearray()
    for vaddr, run, flags in runs:
        phdrs += struct.pack(
            "<IIQQQQQQ", 1, flags, offset + len(body), vaddr, vaddr, len(run), len(run), PAGE
        )
        body += run
    sym_off = offset + len(body)
    str_off = sym_off + len(symtab)
    shstr_off = str_off + len(strtab)
    sh_off = (shstr_off + len(shstr) + 7) & ~7
    entry = runs[0][0] if runs else 0
    header = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + b"\0" * 9,
        2, 62, 1, entry, ehsize, sh_off, 0, ehsize, phsize, len(runs), shsize, 4, 3,
    )  # fmt: skip
    assert ehsize + phsize * len(runs) <= PAGE
    sections = [
        b"\0" * shsize,
        struct.pack("<IIQQQQIIQQ", 1, 2, 0, 0, sym_off, len(symtab), 2, 1, 8, 24),
        struct.pack("<IIQQQQIIQQ", 9, 3, 0, 0, str_off, len(strtab), 0, 0, 1, 0),
        struct.pack("<IIQQQQIIQQ", 17, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0),
    ]
    out = bytearray(header + phdrs)
    out += b"\0" * (offset - len(out)) + body + symtab + strtab + shstr
    out += b"\0" * (sh_off - len(out)) + b"".join(sections)
    path.write_bytes(bytes(out))
