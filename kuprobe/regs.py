"""``struct pt_regs`` per arch, and the kernel's accessors for it.

A ``PtRegs`` is one snapshot of the trapped task's registers under the kernel's field names
for its arch, plus ``STACK_WORDS`` words read from the stack pointer. Live snapshots decode
lazily from the event bytes (most handlers read two or three fields); the model builds them
from emulator registers and reads back what a handler changed.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

STACK_WORDS = 16


@dataclass(frozen=True)
class RegLayout:
    """How one arch's pt_regs looks, and which fields the kernel's accessors read."""

    arch: str
    fields: tuple[str, ...]
    word_bits: int
    ip: str
    sp: str
    retval: str
    args: tuple[str, ...]  # regs_get_kernel_argument(): register arguments, in order


# arch/x86/include/asm/ptrace.h: struct pt_regs (CONFIG_X86_64), regs_get_kernel_argument()
X86_64 = RegLayout(
    arch="x86_64",
    fields=(
        "r15",
        "r14",
        "r13",
        "r12",
        "bp",
        "bx",
        "r11",
        "r10",
        "r9",
        "r8",
        "ax",
        "cx",
        "dx",
        "si",
        "di",
        "orig_ax",
        "ip",
        "cs",
        "flags",
        "sp",
        "ss",
    ),
    word_bits=64,
    ip="ip",
    sp="sp",
    retval="ax",
    args=("di", "si", "dx", "cx", "r8", "r9"),
)
# arch/x86/include/asm/ptrace.h: struct pt_regs (CONFIG_X86_32); the kernel is built with
# -mregparm=3, so regs_get_kernel_argument() reads ax, dx, cx and then the stack.
I386 = RegLayout(
    arch="i386",
    fields=(
        "bx",
        "cx",
        "dx",
        "si",
        "di",
        "bp",
        "ax",
        "ds",
        "es",
        "fs",
        "gs",
        "orig_ax",
        "ip",
        "cs",
        "flags",
        "sp",
        "ss",
    ),
    word_bits=32,
    ip="ip",
    sp="sp",
    retval="ax",
    args=("ax", "dx", "cx"),
)
# arch/arm64/include/uapi/asm/ptrace.h: struct user_pt_regs { regs[31], sp, pc, pstate };
# arch/arm64/include/asm/ptrace.h: regs_get_kernel_argument() reads x0..x7, then 0.
ARM64 = RegLayout(
    arch="arm64",
    fields=(*(f"x{i}" for i in range(31)), "sp", "pc", "pstate"),
    word_bits=64,
    ip="pc",
    sp="sp",
    retval="x0",
    args=tuple(f"x{i}" for i in range(8)),
)

LAYOUTS: dict[str, RegLayout] = {x.arch: x for x in (X86_64, I386, ARM64)}


class PtRegs:
    """One register snapshot; attribute names are the kernel's for ``arch``.

    Subclasses exist per arch (``PtRegsX86_64``, ``PtRegsI386``, ``PtRegsArm64``); build one
    with ``PtRegs.of(arch, values, stack)``. Fields are writable (in the model a handler may
    change them, as a kernel handler may).
    """

    layout: ClassVar[RegLayout]
    __slots__ = ("_raw", "_stack", "_ts", "_vals")

    # A model snapshot sets _vals, _stack and _ts; a live one only _raw, and decodes the rest
    # on first read (most handlers read two or three fields of ~300 bytes).
    _vals: list[int]
    _raw: Any
    _stack: tuple[int, ...]
    _ts: int

    def __init__(self, values: Sequence[int] | None = None, stack: Sequence[int] = ()) -> None:
        n = len(self.layout.fields)
        vals = [0] * n if values is None else [int(v) for v in values]
        if len(vals) != n:
            raise ValueError(f"{self.layout.arch} pt_regs has {n} fields, got {len(vals)}")
        self._vals = vals
        self._stack = tuple(int(w) for w in stack)
        self._ts = 0

    @staticmethod
    def of(arch: str, values: Sequence[int] | None = None, stack: Sequence[int] = ()) -> PtRegs:
        """A snapshot for ``arch`` ("x86_64", "i386", "arm64")."""
        try:
            cls = _CLASSES[arch]
        except KeyError:
            raise ValueError(f"unknown arch {arch!r}; known: {', '.join(_CLASSES)}") from None
        return cls(values, stack)

    @property
    def arch(self) -> str:
        return self.layout.arch

    @property
    def ts(self) -> int:
        """When the trap was taken in ns (live: bpf_ktime_get_ns(), CLOCK_MONOTONIC), else 0."""
        try:
            return self._ts
        except AttributeError:
            return int(self._raw[3])

    @property
    def stack(self) -> tuple[int, ...]:
        """``STACK_WORDS`` words read upwards from the stack pointer at the trap."""
        try:
            return self._stack
        except AttributeError:
            self._decode()
            return self._stack

    def _decode(self) -> list[int]:
        """Decode a live snapshot on first read (``_raw``: decoder, buffer, offset, ts)."""
        decoder, buf, off, ts = self._raw
        self._vals, self._stack = decoder(buf, off)
        self._ts = ts
        return self._vals

    def values(self) -> list[int]:
        """All fields, in pt_regs order."""
        try:
            return list(self._vals)
        except AttributeError:
            return list(self._decode())

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self.layout.fields, self.values(), strict=True))

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:#x}" for k, v in self.as_dict().items())
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PtRegs):
            return NotImplemented
        return (self.arch, self.values(), self.stack) == (other.arch, other.values(), other.stack)

    __hash__ = None  # type: ignore[assignment]


def _field(index: int, mask: int) -> property:
    def get(self: PtRegs) -> int:
        try:
            return self._vals[index]
        except AttributeError:
            return self._decode()[index]

    def put(self: PtRegs, value: int) -> None:
        try:
            vals = self._vals
        except AttributeError:
            vals = self._decode()
        vals[index] = int(value) & mask

    return property(get, put)


def _make(layout: RegLayout, name: str) -> type[PtRegs]:
    mask = (1 << layout.word_bits) - 1
    ns: dict[str, Any] = {"layout": layout, "__slots__": ()}
    for i, fname in enumerate(layout.fields):
        ns[fname] = _field(i, mask)
    return type(name, (PtRegs,), ns)


PtRegsX86_64 = _make(X86_64, "PtRegsX86_64")
PtRegsI386 = _make(I386, "PtRegsI386")


class PtRegsArm64(_make(ARM64, "_PtRegsArm64Base")):  # type: ignore[misc]
    """arm64 ``user_pt_regs``: ``regs[0..30]`` (also ``x0``…``x30``), ``sp``, ``pc``, ``pstate``."""

    __slots__ = ()

    @property
    def regs(self) -> _RegsView:
        return _RegsView(self)


class _RegsView:
    """``regs->regs[n]`` on arm64, backed by the snapshot."""

    __slots__ = ("_r",)

    def __init__(self, r: PtRegs) -> None:
        self._r = r

    def __len__(self) -> int:
        return 31

    def __getitem__(self, n: int) -> int:
        if not 0 <= n < 31:
            raise IndexError(n)
        return int(getattr(self._r, f"x{n}"))

    def __setitem__(self, n: int, value: int) -> None:
        if not 0 <= n < 31:
            raise IndexError(n)
        setattr(self._r, f"x{n}", value)


_CLASSES: dict[str, type[PtRegs]] = {
    "x86_64": PtRegsX86_64,
    "i386": PtRegsI386,
    "arm64": PtRegsArm64,
}


def regs_class(arch: str) -> type[PtRegs]:
    return _CLASSES[arch]


# --- the kernel's accessors ------------------------------------------------------------


def instruction_pointer(regs: PtRegs) -> int:
    """arch/*/include/asm/ptrace.h: instruction_pointer()."""
    return int(getattr(regs, regs.layout.ip))


def user_stack_pointer(regs: PtRegs) -> int:
    """arch/*/include/asm/ptrace.h: user_stack_pointer()."""
    return int(getattr(regs, regs.layout.sp))


def regs_return_value(regs: PtRegs) -> int:
    """arch/*/include/asm/ptrace.h: regs_return_value() — raw register, unsigned."""
    return int(getattr(regs, regs.layout.retval))


def regs_get_kernel_stack_nth(regs: PtRegs, n: int) -> int:
    """The n-th word up from the stack pointer, 0 when not captured (as the kernel's is)."""
    stack = regs.stack
    return stack[n] if 0 <= n < len(stack) else 0


def regs_get_kernel_argument(regs: PtRegs, n: int) -> int:
    """The n-th argument per the arch's kernel calling convention (0-based).

    x86_64: di, si, dx, cx, r8, r9, then the stack; i386: ax, dx, cx (regparm(3)), then the
    stack; arm64: x0..x7, then 0 — as arch/*/include/asm/ptrace.h define it.
    """
    args = regs.layout.args
    if 0 <= n < len(args):
        return int(getattr(regs, args[n]))
    if regs.arch == "arm64":
        return 0
    return regs_get_kernel_stack_nth(regs, n - (len(args) - 1))


def signed(value: int, bits: int = 64) -> int:
    """A register's raw value read as a signed ``bits``-bit integer."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def unpack_words(data: bytes, bits: int, count: int = STACK_WORDS) -> tuple[int, ...]:
    fmt = f"<{count}{'Q' if bits == 64 else 'I'}"
    return struct.unpack_from(fmt, data)
