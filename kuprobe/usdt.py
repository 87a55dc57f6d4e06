"""USDT probes (systemtap's ``<sys/sdt.h>``): each site of a ``provider:name`` probe, a uprobe.

A ``stapsdt`` note names each site, its semaphore and its arguments.

``Usdt(path, provider, name, handler=...)`` reads the notes (kuprobe/elf.py) and builds one
``Uprobe`` per site, with ``ref_ctr_offset`` at the semaphore's file offset, so the kernel
raises the semaphore while the probe is registered (kernel/events/uprobes.c:
update_ref_ctr(); code guarded by ``if (provider_name_semaphore)`` runs only while traced).
Registering a ``Usdt`` registers all its sites, all or none.

A note's arguments are ``[-]SIZE@OPERAND`` (SIZE bytes, negative: signed); OPERAND is how
the compiler placed the value when the site ran (systemtap's sdt.h: the "nor" constraint):
a register (``%edi``, ``%cl``; arm64 ``x0``, ``w1``), a constant (``$5``; arm64 ``5``), or a
memory word at a register plus an offset (``-24(%rbp)``; arm64 ``[sp, 40]``). The forms are
those libbpf decodes (tools/lib/bpf/usdt.c: parse_usdt_arg()). A memory argument is read
from the stack words captured at the trap; one outside them is a ``ProbeError(EFAULT)``.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from kuprobe.backend import Backend, register_all_or_none
from kuprobe.elf import UsdtNote
from kuprobe.errors import ProbeError
from kuprobe.probes import Capture, Uprobe, UprobeConsumer
from kuprobe.regs import PtRegs

# x86 register names as sdt.h prints them (any width) -> the kernel's pt_regs field.
_X86_NAMES: dict[str, str] = {}
for _base in ("ax", "bx", "cx", "dx"):
    for _n in (f"r{_base}", f"e{_base}", _base, f"{_base[0]}l", f"{_base[0]}h"):
        _X86_NAMES[_n] = _base
for _base in ("si", "di", "bp", "sp"):
    for _n in (f"r{_base}", f"e{_base}", _base, f"{_base}l"):
        _X86_NAMES[_n] = _base
for _i in range(8, 16):
    for _n in (f"r{_i}", f"r{_i}d", f"r{_i}w", f"r{_i}b"):
        _X86_NAMES[_n] = f"r{_i}"
_X86_NAMES.update(rip="ip", eip="ip")
_X86_HIGH = {"ah", "bh", "ch", "dh"}  # bits 8..15 of the register

_ARG = re.compile(r"(?P<size>-?\d+)@(?P<op>.+)")
_X86_REG = re.compile(r"%(?P<reg>[a-z0-9]+)")
_X86_IMM = re.compile(r"\$(?P<imm>-?(?:0x[0-9a-fA-F]+|\d+))")
_X86_MEM = re.compile(r"(?P<off>-?(?:0x[0-9a-fA-F]+|\d+))?\(%(?P<reg>[a-z0-9]+)\)")
_ARM_REG = re.compile(r"(?P<reg>[xw]\d+|sp)")
_ARM_IMM = re.compile(r"#?(?P<imm>-?(?:0x[0-9a-fA-F]+|\d+))")
_ARM_MEM = re.compile(r"\[(?P<reg>[xw]\d+|sp)(?:,\s*#?(?P<off>-?(?:0x[0-9a-fA-F]+|\d+)))?\]")


@dataclass(frozen=True)
class UsdtArg:
    """One decoded argument: ``size`` bytes (``signed`` or not) in a register (``reg``),
    a constant (``reg`` None, ``value``), or in memory at ``reg`` + ``offset`` (``deref``)."""

    text: str
    size: int
    signed: bool
    reg: str | None = None
    offset: int = 0
    deref: bool = False
    shift: int = 0  # 8 for %ah …: the byte above the lowest

    def value(self, regs: PtRegs) -> int:
        """The argument's value at the site, from a snapshot taken there."""
        if self.reg is None:
            raw = self.offset
        else:
            base = int(getattr(regs, self.reg))
            if self.deref:
                raw = _stack_word(regs, base + self.offset, self.size, self.text)
            else:
                raw = base >> self.shift
        bits = 8 * self.size
        raw &= (1 << bits) - 1
        if self.signed and raw >> (bits - 1):
            raw -= 1 << bits
        return raw


def _stack_word(regs: PtRegs, addr: int, size: int, text: str) -> int:
    """``size`` bytes at user address ``addr``, if inside the stack words captured at the
    trap (little-endian: every arch kuprobe knows)."""
    word = regs.info.word_bytes
    mask = (1 << regs.info.bits) - 1
    sp = int(getattr(regs, regs.layout.sp)) & mask
    stack = regs.stack
    start = (addr & mask) - sp
    if start < 0 or start + size > len(stack) * word:
        raise ProbeError(
            errno.EFAULT,
            f"USDT argument {text!r}: address {addr & mask:#x} is outside the "
            f"{len(stack)} stack words captured at the trap (sp {sp:#x})",
        )
    blob = b"".join(w.to_bytes(word, "little") for w in stack)
    return int.from_bytes(blob[start : start + size], "little")


def split_args(text: str) -> list[str]:
    """A note's argument string into its arguments (arm64's ``[sp, 40]`` has a space)."""
    return re.findall(r"[^\s\[]*\[[^\]]*\]|\S+", text)


def _number(text: str) -> int:
    return int(text, 0)


def parse_arg(text: str, arch: str) -> UsdtArg:
    """One ``SIZE@OPERAND`` of a note, for ``arch`` ("x86_64", "i386", "arm64")."""
    m = _ARG.fullmatch(text)
    if not m or int(m.group("size")) == 0 or abs(int(m.group("size"))) > 8:
        raise ProbeError(errno.EINVAL, f"USDT argument {text!r} is not SIZE@OPERAND")
    size, op = int(m.group("size")), m.group("op")
    signed, size = size < 0, abs(size)
    if arch in ("x86_64", "i386"):
        if r := _X86_REG.fullmatch(op):
            name = r.group("reg")
            if name in _X86_NAMES:
                return UsdtArg(text, size, signed, _X86_NAMES[name], shift=8 * (name in _X86_HIGH))
        elif i := _X86_IMM.fullmatch(op):
            return UsdtArg(text, size, signed, None, _number(i.group("imm")))
        elif (mm := _X86_MEM.fullmatch(op)) and mm.group("reg") in _X86_NAMES:
            reg = _X86_NAMES[mm.group("reg")]
            if reg != "ip":  # sym(%rip): a global, not on the stack
                off = _number(mm.group("off") or "0")
                return UsdtArg(text, size, signed, reg, off, deref=True)
    elif arch == "arm64":
        if r := _ARM_REG.fullmatch(op):
            name = r.group("reg")
            return UsdtArg(text, size, signed, "sp" if name == "sp" else f"x{name[1:]}")
        if mm := _ARM_MEM.fullmatch(op):
            name = mm.group("reg")
            reg = "sp" if name == "sp" else f"x{name[1:]}"
            return UsdtArg(text, size, signed, reg, _number(mm.group("off") or "0"), deref=True)
        if i := _ARM_IMM.fullmatch(op):
            return UsdtArg(text, size, signed, None, _number(i.group("imm")))
    raise ProbeError(
        errno.EOPNOTSUPP,
        f"USDT argument {text!r}: kuprobe does not decode this {arch} operand",
        hint="registers, constants and register+offset memory are decoded",
    )


@dataclass(frozen=True)
class UsdtSite:
    """One site of a USDT probe: where the uprobe goes, its semaphore, its arguments."""

    note: UsdtNote
    offset: int  # file offset of the site
    ref_ctr_offset: int  # file offset of the semaphore, 0 if none
    args: tuple[UsdtArg, ...]

    def arg(self, regs: PtRegs, n: int) -> int:
        """``argN`` (0-based) of this site, from a snapshot taken at it."""
        if not 0 <= n < len(self.args):
            raise ProbeError(
                errno.EINVAL,
                f"{self.note.provider}:{self.note.name} has {len(self.args)} arguments, no arg{n}",
            )
        return self.args[n].value(regs)


UsdtHandler = Callable[[UsdtSite, PtRegs], int | None]


def usdt_sites(path: str, provider: str, name: str, pid: int | None = None) -> list[UsdtSite]:
    """Every site of ``provider:name`` in the file at ``path`` (a library or program name
    works too, through process ``pid``'s mappings if given: kuprobe/libraries.py:
    find_target); ENOENT lists the probes the file has."""
    from kuprobe.elf import open_image
    from kuprobe.libraries import find_target

    elf = open_image(find_target(path, pid=pid))
    notes = [n for n in elf.usdt_notes if (n.provider, n.name) == (provider, name)]
    if not notes:
        have = sorted({f"{n.provider}:{n.name}" for n in elf.usdt_notes})
        raise ProbeError(
            errno.ENOENT,
            f"{path}: no USDT probe {provider}:{name}",
            hint=f"it has: {', '.join(have)}" if have else "it has no .note.stapsdt notes",
        )
    sites: list[UsdtSite] = []
    for n in notes:
        args = tuple(parse_arg(a, elf.arch) for a in split_args(n.args))
        sem = elf.vaddr_to_offset(n.semaphore) if n.semaphore else 0
        sites.append(UsdtSite(n, elf.vaddr_to_offset(n.pc), sem, args))
    return sites


@dataclass(eq=False)
class Usdt:
    """A USDT probe ``provider:name`` of the file at ``path``: a uprobe at each site.

    ``handler(site, regs)`` runs for each hit; ``site.arg(regs, n)`` decodes ``argN``.
    ``pid`` limits every site's uprobe to one process. Register with ``register_usdt`` (or
    register ``uprobes`` yourself on any backend)."""

    path: str
    provider: str
    name: str
    handler: UsdtHandler | None = None
    pid: int | None = None
    stack: bool = False  # record the user stack at each hit (kuprobe/stacks.py)
    # Memory read at each hit: a Capture at "argN" is at the note's argN (a register operand)
    capture: tuple[Capture, ...] = ()
    file: str = field(init=False)  # the file ``path`` names
    sites: list[UsdtSite] = field(init=False)
    uprobes: list[Uprobe] = field(init=False)

    def __post_init__(self) -> None:
        from kuprobe.libraries import find_target

        # resolved once: the sites and their uprobes name the same file
        self.file = find_target(self.path, pid=self.pid)
        self.sites = usdt_sites(self.file, self.provider, self.name)
        self.uprobes = [self._uprobe(s) for s in self.sites]

    def _uprobe(self, site: UsdtSite) -> Uprobe:
        handler = self.handler

        def on_hit(_uc: UprobeConsumer, regs: PtRegs) -> int:
            return (handler(site, regs) or 0) if handler is not None else 0

        return Uprobe(
            self.file,
            offset=site.offset,
            ref_ctr_offset=site.ref_ctr_offset,
            consumer=UprobeConsumer(handler=on_hit if handler is not None else None),
            pid=self.pid,
            stack=self.stack,
            capture=tuple(self._site_capture(site, c) for c in self.capture),
        )

    def _site_capture(self, site: UsdtSite, c: Capture) -> Capture:
        """``c`` with the note's ``argN`` as the register the compiler put it in."""
        m = re.fullmatch(r"arg(\d+)", c.at)
        if m is None:
            return c
        n = int(m.group(1))
        if n >= len(site.args):
            raise ProbeError(
                errno.EINVAL,
                f"{self.provider}:{self.name} has {len(site.args)} arguments, no arg{n}",
            )
        arg = site.args[n]
        if arg.reg is None or arg.deref:
            raise ProbeError(
                errno.EOPNOTSUPP,
                f"{self.provider}:{self.name} arg{n} is {arg.text!r} at {site.note.pc:#x}: "
                "kuprobe reads memory at a register operand only",
            )
        return replace(c, at=arg.reg)

    @property
    def hits(self) -> int:
        """Hits over every site."""
        return sum(u.hits for u in self.uprobes)

    @property
    def registered(self) -> bool:
        return any(u.registered for u in self.uprobes)

    def register(self, backend: Backend) -> None:
        """Register every site on ``backend``, all or none (kuprobe.register_usdt: live)."""
        register_all_or_none(self.uprobes, backend.register_uprobe, backend.unregister_uprobe)

    def unregister(self, backend: Backend) -> None:
        """Unregister every site in one batch; afterwards counters are final."""
        backend.unregister_uprobes([p for p in self.uprobes if p.registered])
