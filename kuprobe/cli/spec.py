"""Probe specs as people type them, parsed and checked: ``k:sym``, ``u:/path:sym`` …

The forms: ``k:sym[+off]``, ``kr:sym``, ``u:/path:sym[+off]``, ``u:/path:0xOFFSET``,
``ur:/path:sym``, ``usdt:/path:provider:name``, each optionally followed by what to print. A
uprobe's or USDT's path may be a library name (``u:libc:getpid``).

``parse_spec`` only reads the text (``SpecError`` on a mistake); ``check_spec`` also opens the
ELF file of a uprobe spec, so a missing file or symbol is reported before anything attaches.
What a probe prints is read from the register snapshot of each event: ``argN`` by the
function's calling convention, ``retval`` on a return probe, or a register by the kernel's
name for it (``di``, ``ax``, ``x0`` …); ``:x`` after a name prints it in hex.
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from kuprobe.arch import ARCHES, host_arch
from kuprobe.errors import KuprobeError, ProbeError
from kuprobe.probes import CAPTURE_MAX_BYTES, Capture
from kuprobe.regs import PtRegs, regs_get_kernel_argument, user_argument

if TYPE_CHECKING:
    from kuprobe.usdt import UsdtSite

Kind = Literal["k", "kr", "u", "ur", "usdt"]

# bpftrace's long names are accepted too.
_KINDS: dict[str, Kind] = {
    "k": "k",
    "kprobe": "k",
    "kr": "kr",
    "kretprobe": "kr",
    "u": "u",
    "uprobe": "u",
    "ur": "ur",
    "uretprobe": "ur",
    "usdt": "usdt",
}
_SYMBOL = re.compile(r"[A-Za-z_.$][\w.$@]*")
_ARG = re.compile(
    r"(?P<name>[a-z_][a-z0-9_]*)(?P<off>[+-](?:0x[0-9a-f]+|\d+))?"
    r"(?::(?P<fmt>[a-z]+?)(?P<size>\d+)?)?"
)
# Memory read at the hit: a string or a buffer at the value (+ offset), user or kernel.
_MEMORY_FORMATS = {
    "str": ("str", ""),
    "ustr": ("str", "user"),
    "kstr": ("str", "kernel"),
    "buf": ("buf", ""),
    "ubuf": ("buf", "user"),
    "kbuf": ("buf", "kernel"),
}
DEFAULT_BUF = 16
_ARGN = re.compile(r"arg(\d+)")
MAX_ARG = 11  # arg0 .. arg11: registers and then the captured stack words
_REGISTERS = frozenset(f for info in ARCHES.values() for f in info.regs.fields)

EXAMPLES = """\
  k:do_sys_openat2              kernel function entry
  k:do_sys_openat2+4            an instruction 4 bytes into it
  kr:do_sys_openat2 retval      kernel function return, printing the return value
  u:/bin/bash:readline          user function entry (path to the executable or library)
  u:libc:getpid                 a library by name (libc, c, libssl.so.3), found as the
                                dynamic linker would, or a program on PATH (bash); with
                                --pid, the file that process maps
  u:/bin/bash:readline+8        an instruction 8 bytes into the function
  u:/bin/bash:0x8f0a0           a file offset in the executable
  ur:/bin/bash:readline retval  user function return
  'u:/bin/bash:readline arg0 di:x'
                                print the first argument, and %rdi in hex
  'u:./demo:demo_handle arg0 arg1:str'
                                a string at arg1, read when the probe fires (:str64 at most
                                64 bytes; :buf32 32 bytes in hex; arg1+8:str at arg1 + 8;
                                :ustr/:kstr user or kernel memory, a kprobe's :str by address)
  'ur:/bin/bash:readline retval:str'   the line readline returned
  'k:do_sys_openat2 arg1:str'   the file name opened (a user pointer)
  'usdt:python3.11:python:import__find__load__start arg0:str'
                                a USDT probe (<sys/sdt.h>): a uprobe at each of its sites,
                                its semaphore raised while traced; argN as its note says"""


class SpecError(KuprobeError, ValueError):
    """A probe spec that cannot be read; the message says what is wrong and shows the form."""


@dataclass(frozen=True)
class Arg:
    """One value to print for each event."""

    name: str  # "arg0" … , "retval" or a register name
    hex: bool = False
    memory: str | None = None  # "str" or "buf": read memory at the value + offset at the hit
    offset: int = 0
    size: int = 0
    space: str = ""  # "user", "kernel"; "" = the probe's own (a kprobe: by the address)
    text: str = ""  # a memory value as typed ("arg1:str", "arg0+8:buf32")

    def __str__(self) -> str:
        if self.memory is not None:
            return self.text
        return f"{self.name}:x" if self.hex else self.name

    def capture(self, *, kernel: bool) -> Capture:
        """What the probe reads at the hit for this value (kuprobe/probes.py: Capture)."""
        assert self.memory is not None
        space = self.space or ("auto" if kernel else "user")
        return Capture(self.name, self.offset, self.memory, self.size, space)


@dataclass(frozen=True)
class ProbeSpec:
    """One parsed spec. ``symbol`` is None for a raw file offset (``u:/path:0x…``); for a
    USDT spec it is the probe's name and ``provider`` its provider."""

    kind: Kind
    path: str | None
    symbol: str | None
    offset: int
    args: tuple[Arg, ...] = ()
    provider: str | None = None

    @property
    def is_return(self) -> bool:
        return self.kind in ("kr", "ur")

    @property
    def is_kernel(self) -> bool:
        return self.kind in ("k", "kr")

    @property
    def target(self) -> str:
        """``sym``, ``sym+0x10`` or ``0x8f0a0``: where in the file or the kernel."""
        if self.kind == "usdt":
            return f"{self.provider}:{self.symbol}"
        if self.symbol is None:
            return f"{self.offset:#x}"
        return f"{self.symbol}+{self.offset:#x}" if self.offset else self.symbol

    @property
    def label(self) -> str:
        """A short name for tables: the file's base name instead of its path."""
        if self.path is None:
            return f"{self.kind}:{self.target}"
        return f"{self.kind}:{os.path.basename(self.path)}:{self.target}"

    def __str__(self) -> str:
        head = (
            f"{self.kind}:{self.target}"
            if self.path is None
            else (f"{self.kind}:{self.path}:{self.target}")
        )
        return " ".join([head, *map(str, self.args)])


def _number(text: str, spec: str, what: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise SpecError(f"{spec!r}: {what} {text!r} is not a number (use 16 or 0x10)") from None
    if value < 0:
        raise SpecError(f"{spec!r}: {what} must not be negative")
    return value


def _symbol_offset(text: str, spec: str) -> tuple[str, int]:
    sym, plus, off = text.partition("+")
    if not sym:
        raise SpecError(f"{spec!r}: no function name (e.g. 'k:do_sys_openat2')")
    if not _SYMBOL.fullmatch(sym):
        raise SpecError(f"{spec!r}: {sym!r} is not a symbol name")
    if not plus:
        return sym, 0
    if not off:
        raise SpecError(f"{spec!r}: nothing after '+' (e.g. '{sym}+4')")
    return sym, _number(off, spec, "offset")


def _parse_arg(token: str, spec: str, kind: Kind) -> Arg:
    m = _ARG.fullmatch(token)
    if not m:
        raise SpecError(f"{spec!r}: cannot read {token!r} (print argN, retval or a register)")
    name, fmt = m.group("name"), m.group("fmt")
    memory = _MEMORY_FORMATS.get(fmt or "")
    if fmt not in (None, "x", "d") and memory is None:
        raise SpecError(
            f"{spec!r}: unknown format ':{fmt}' in {token!r} "
            "(use :x, :d, :str[N], :buf[N], or :ustr/:kstr/:ubuf/:kbuf)"
        )
    if m.group("size") and memory is None:
        raise SpecError(f"{spec!r}: a size goes with :str or :buf, not in {token!r}")
    if m.group("off") and memory is None:
        raise SpecError(f"{spec!r}: an offset goes with :str or :buf ('arg0+8:str')")
    if name == "retval":
        if kind not in ("kr", "ur"):
            raise SpecError(
                f"{spec!r}: retval exists only on a return probe (kr:/ur:), not on {kind}:"
            )
    elif n := _ARGN.fullmatch(name):
        if int(n.group(1)) > MAX_ARG:
            raise SpecError(f"{spec!r}: {name} is out of range (arg0 … arg{MAX_ARG})")
    elif name not in _REGISTERS:
        raise SpecError(
            f"{spec!r}: {token!r} is not argN, retval or a register name (di, ax, x0 …)"
        )
    if memory is not None:
        if kind == "usdt" and not _ARGN.fullmatch(name):
            raise SpecError(f"{spec!r}: at a USDT site memory is read at argN ({token!r})")
        size = int(m.group("size") or (CAPTURE_MAX_BYTES if memory[0] == "str" else DEFAULT_BUF))
        if not 0 < size <= CAPTURE_MAX_BYTES:
            raise SpecError(f"{spec!r}: {token!r}: size 1 … {CAPTURE_MAX_BYTES} bytes")
        off = m.group("off")
        offset = int(off, 0) if off else 0
        return Arg(name, False, memory[0], offset, size, memory[1], token)
    return Arg(name, hex=fmt == "x")


def parse_spec(text: str) -> ProbeSpec:
    """Read one spec; whitespace-separated words after the first are the values to print."""
    words = text.split()
    if not words:
        raise SpecError("empty probe spec (e.g. 'u:/bin/bash:readline')")
    head, rest = words[0], words[1:]
    prefix, colon, body = head.partition(":")
    if not colon:
        raise SpecError(
            f"{head!r}: a spec starts with k:, kr:, u:, ur: or usdt: (e.g. 'u:/bin/bash:readline')"
        )
    kind = _KINDS.get(prefix)
    if kind is None:
        raise SpecError(f"{head!r}: unknown probe type {prefix!r} (use k, kr, u, ur or usdt)")
    if kind == "usdt":
        file, _, rest_ = body.rpartition(":")
        usdt_path, _, provider = file.rpartition(":")
        if not usdt_path or not provider or not rest_:
            raise SpecError(
                f"{head!r}: a USDT spec is 'usdt:/path/to/prog:PROVIDER:NAME' "
                "(list them with `readelf -n PROG`)"
            )
        for part in (provider, rest_):
            if not _SYMBOL.fullmatch(part):
                raise SpecError(f"{head!r}: {part!r} is not a USDT provider or probe name")
        if "/" in usdt_path:
            usdt_path = os.path.abspath(usdt_path)
        usdt_args = tuple(_parse_arg(w, head, "usdt") for w in rest)
        for a in usdt_args:
            if not _ARGN.fullmatch(a.name) and a.name not in _REGISTERS:
                raise SpecError(f"{head!r}: print argN or a register at a USDT site")
        return ProbeSpec("usdt", usdt_path, rest_, 0, usdt_args, provider=provider)
    path: str | None = None
    symbol: str | None
    if kind in ("u", "ur"):
        path, colon, where = body.rpartition(":")
        if not colon or not path:
            raise SpecError(
                f"{head!r}: a uprobe needs a file and a place: '{prefix}:/path/to/prog:function'"
            )
        if not where:
            raise SpecError(f"{head!r}: no function or offset after {path!r}")
        if where[0].isdigit():
            symbol, offset = None, _number(where, head, "file offset")
        else:
            symbol, offset = _symbol_offset(where, head)
        if "/" in path:  # else a library name (kuprobe/libraries.py: find_library)
            path = os.path.abspath(path)
    else:
        if not body:
            raise SpecError(f"{head!r}: no function name (e.g. '{prefix}:do_sys_openat2')")
        symbol, offset = _symbol_offset(body, head)
    if kind in ("kr", "ur") and (offset or symbol is None):
        raise SpecError(
            f"{head!r}: a return probe goes on a function's entry; drop the offset "
            f"(e.g. '{prefix}:{'' if path is None else path + ':'}{symbol or 'function'}')"
        )
    args = tuple(_parse_arg(w, head, kind) for w in rest)
    return ProbeSpec(kind=kind, path=path, symbol=symbol, offset=offset, args=args)


def check_spec(spec: ProbeSpec, *, pid: int | None = None) -> str:
    """Resolve a uprobe spec as registering it would (kuprobe/resolve.py: the file or the
    library a name means, through process ``pid``'s mappings if given; the symbol, the
    offset inside it and on an instruction boundary), so a mistake is reported before
    anything attaches.

    Returns the probed code's arch (for kernel specs: the running kernel's). Raises
    ``SpecError``.
    """
    from kuprobe.resolve import resolve_uprobe

    if spec.kind == "usdt":
        from kuprobe.usdt import usdt_sites

        try:
            sites = usdt_sites(spec.path or "", spec.provider or "", spec.symbol or "", pid)
        except ProbeError as e:
            code = errno.errorcode.get(e.errno or 0, str(e.errno))
            text = f"{e.strerror} [{code}]" + (f" (hint: {e.hint})" if e.hint else "")
            raise SpecError(text) from e
        for arg in spec.args:
            if (n := _ARGN.fullmatch(arg.name)) and int(n.group(1)) >= len(sites[0].args):
                raise SpecError(
                    f"{spec}: {spec.target} has {len(sites[0].args)} arguments, no {arg.name}"
                )
        arch = resolve_uprobe(
            spec.path or "", symbol_name=None, offset=sites[0].offset, pid=pid
        ).arch
    elif spec.path is None:
        host = host_arch()
        if host is None:
            raise SpecError(f"{spec}: kuprobe knows no arch {os.uname().machine!r}")
        arch = host.name
    else:
        try:
            arch = resolve_uprobe(
                spec.path, symbol_name=spec.symbol, offset=spec.offset, pid=pid
            ).arch
        except ProbeError as e:
            code = errno.errorcode.get(e.errno or 0, str(e.errno))
            text = f"{e.strerror} [{code}]" + (f" (hint: {e.hint})" if e.hint else "")
            raise SpecError(text) from e
    for arg in spec.args:
        if arg.name in _REGISTERS and arg.name not in ARCHES[arch].regs.fields:
            raise SpecError(f"{spec}: {arch} has no register {arg.name!r}")
    return arch


def fetch(regs: PtRegs, arg: Arg, *, user: bool, site: UsdtSite | None = None) -> int:
    """The value of ``arg`` in a snapshot taken at the probe (entry or return).

    ``argN`` follows the calling convention of the probed code: the kernel's
    (regs_get_kernel_argument) for a kprobe, the user ABI for a uprobe — on i386 that is
    cdecl, all on the stack above the return address. On a return probe ``argN`` is only what
    is left in those registers. At a USDT ``site``, ``argN`` is what its note says.
    """
    name = arg.name
    if site is not None and (m := _ARGN.fullmatch(name)):
        return site.arg(regs, int(m.group(1)))
    if name == "retval":
        return int(getattr(regs, regs.layout.retval))
    if m := _ARGN.fullmatch(name):
        n = int(m.group(1))
        return user_argument(regs, n) if user else regs_get_kernel_argument(regs, n)
    return int(getattr(regs, name))


def value_of(regs: PtRegs, arg: Arg, *, user: bool, site: UsdtSite | None = None) -> int:
    """``arg``'s value as a number: signed unless it prints in hex (``:x``)."""
    value = fetch(regs, arg, user=user, site=site)
    bits = regs.info.bits
    if value < 0:  # a USDT argument, already signed by its note
        return value & ((1 << bits) - 1) if arg.hex else value
    if not arg.hex and value >> (bits - 1):  # negative numbers as such; pointers read in :x
        value -= 1 << bits
    return value


def format_value(regs: PtRegs, arg: Arg, value: int | None = None, *, user: bool = True) -> str:
    """``name=value`` as ``kuprobe trace`` prints it (``value`` if already fetched)."""
    if value is None:
        value = value_of(regs, arg, user=user)
    return f"{arg.name}={value:#x}" if arg.hex else f"{arg.name}={value}"


# A printed value: a number, the text or hex bytes read at the hit, or {"fault": why}.
Value = int | str | dict[str, str]


def memory_value(regs: PtRegs, arg: Arg, *, user: bool, site: UsdtSite | None = None) -> Value:
    """The string (text) or buffer (hex) ``arg`` names, as read at the hit
    (kuprobe/uaccess.py); ``{"fault": …}`` if that read failed or was not made."""
    from kuprobe.uaccess import (
        copy_from_kernel_nofault,
        copy_from_user,
        strncpy_from_kernel_nofault,
        strncpy_from_user,
    )

    mask = (1 << regs.info.bits) - 1
    addr = (fetch(regs, arg, user=user, site=site) + arg.offset) & mask
    space = arg.space or ("user" if user else "auto")
    in_user = space == "user" or (space == "auto" and not addr >> (regs.info.bits - 1))
    try:
        if arg.memory == "str":
            read_str = strncpy_from_user if in_user else strncpy_from_kernel_nofault
            return read_str(addr, arg.size).decode("utf-8", "backslashreplace")
        read = copy_from_user if in_user else copy_from_kernel_nofault
        return read(addr, arg.size).hex()
    except ProbeError as e:
        why = "not captured" if "not captured" in str(e) else "unreadable at the hit"
        return {"fault": f"{why}: {addr:#x}"}


def format_memory(arg: Arg, value: Value) -> str:
    if isinstance(value, dict):
        return f"{arg}=<{value['fault']}>"
    if arg.memory == "str":
        return f"{arg}={json.dumps(value, ensure_ascii=False)}"
    return f"{arg}={value}"
