"""``struct pt_regs`` per arch, and the kernel's accessors for it.

A ``PtRegs`` is one snapshot of the trapped task's registers under the kernel's field names
for its arch (the layouts are in kuprobe/arch.py), plus ``STACK_WORDS`` words read from the
stack pointer. Live snapshots decode lazily from the event bytes (most handlers read two or
three fields); the model builds them from emulator registers and reads back what a handler
changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from kuprobe.arch import ARCHES, ARM64, ArchInfo, RegLayout, arch_info
from kuprobe.errors import KuprobeValueError

STACK_WORDS = 16


class PtRegs:
    """One register snapshot; attribute names are the kernel's for ``arch``.

    One subclass exists per arch of kuprobe.arch.ARCHES (``regs_class(arch)``); build one with
    ``PtRegs.of(arch, values, stack)``. Fields are writable (in the model a handler may change
    them, as a kernel handler may).
    """

    info: ClassVar[ArchInfo]
    layout: ClassVar[RegLayout]
    __slots__ = ("_raw", "_stack", "_ts", "_vals")

    # A model snapshot sets _vals, _stack and _ts; a live one only _raw, and decodes the rest
    # on first read (most handlers read two or three fields of ~300 bytes).
    _vals: list[int]
    _raw: Any
    _stack: tuple[int, ...]
    _ts: int

    def __init__(
        self, values: Sequence[int] | None = None, stack: Sequence[int] = (), *, ts: int = 0
    ) -> None:
        n = len(self.layout.fields)
        vals = [0] * n if values is None else [int(v) for v in values]
        if len(vals) != n:
            raise KuprobeValueError(f"{self.info.name} pt_regs has {n} fields, got {len(vals)}")
        self._vals = vals
        self._stack = tuple(int(w) for w in stack)
        self._ts = int(ts)

    if TYPE_CHECKING:
        # Fields are properties made per arch (_make); to a type checker every field name
        # (regs.di, regs.x0 …) is Any: an int, or on arm64 also the regs.regs[n] view.
        def __getattr__(self, name: str) -> Any: ...
        def __setattr__(self, name: str, value: Any) -> None: ...

    @staticmethod
    def of(
        arch: str, values: Sequence[int] | None = None, stack: Sequence[int] = (), *, ts: int = 0
    ) -> PtRegs:
        """A snapshot for ``arch`` ("x86_64", "i386", "arm64"), taken at ``ts`` ns."""
        return regs_class(arch)(values, stack, ts=ts)

    @property
    def arch(self) -> str:
        return self.info.name

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


def _make(info: ArchInfo, base: type[PtRegs] = PtRegs) -> type[PtRegs]:
    """The PtRegs subclass of one arch: a property per pt_regs field, masked to its width."""
    mask = (1 << info.bits) - 1
    ns: dict[str, Any] = {"info": info, "layout": info.regs, "__slots__": ()}
    for i, fname in enumerate(info.regs.fields):
        ns[fname] = _field(i, mask)
    return type(f"PtRegs_{info.name}", (base,), ns)


class _Arm64Regs(PtRegs):
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


# arm64's pt_regs is also read as regs->regs[n] (arch/arm64/include/asm/ptrace.h).
_BASES: dict[str, type[PtRegs]] = {ARM64.name: _Arm64Regs}
_CLASSES: dict[str, type[PtRegs]] = {
    name: _make(info, _BASES.get(name, PtRegs)) for name, info in ARCHES.items()
}


def regs_class(arch: str) -> type[PtRegs]:
    """The PtRegs subclass for ``arch``; KuprobeValueError naming the known arches otherwise."""
    return _CLASSES[arch_info(arch).name]


# --- the backends' constructors -------------------------------------------------------------
# A snapshot's private fields are written here only. Backends build snapshots on their hot
# paths (every trap, every event) through these, which skip __init__'s checks.

Decoder = Callable[[Any, int], tuple[list[int], tuple[int, ...]]]


def lazy_regs(cls: type[PtRegs], decoder: Decoder) -> Callable[[Any, int, int], PtRegs]:
    """A constructor of live snapshots, ``make(buf, off, ts)``: the event record at ``off``
    of ``buf``, decoded by ``decoder`` on the first read of a field (most handlers read two or
    three fields of ~300 bytes)."""
    new = object.__new__

    def make(buf: Any, off: int, ts: int) -> PtRegs:
        r = new(cls)
        r._raw = (decoder, buf, off, ts)
        return r

    return make


def raw_record(regs: PtRegs) -> tuple[Any, int]:
    """(buffer, offset) of the event record a live snapshot decodes from."""
    _decoder, buf, off, _ts = regs._raw
    return buf, off


def model_regs(cls: type[PtRegs], values: list[int]) -> PtRegs:
    """A model snapshot of ``values`` (taken as they are, in pt_regs order: the caller made
    them for ``cls``), with no stack words yet (``set_stack``) and no timestamp."""
    regs: PtRegs = object.__new__(cls)
    regs._vals = values
    regs._stack = ()
    regs._ts = 0
    return regs


def set_stack(regs: PtRegs, words: Sequence[int]) -> None:
    """The stack words read up from the stack pointer at the trap (``regs.stack``)."""
    regs._stack = tuple(words)


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
    args = regs.layout.kernel_args
    if 0 <= n < len(args):
        return int(getattr(regs, args[n]))
    if not regs.layout.kernel_args_spill:
        return 0
    return regs_get_kernel_stack_nth(regs, n - (len(args) - 1))


def user_argument(regs: PtRegs, n: int) -> int:
    """The n-th integer argument (0-based) of a user-space function, at its entry, per the
    arch's psABI: its argument registers, then the stack words above the return address
    (i386 cdecl: all on the stack). kuprobe's own accessor: the kernel has none for user code.
    """
    args = regs.layout.user_args
    if 0 <= n < len(args):
        return int(getattr(regs, args[n]))
    return regs_get_kernel_stack_nth(regs, n - len(args) + 1)


def signed(value: int, bits: int = 64) -> int:
    """A register's raw value read as a signed ``bits``-bit integer."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value
