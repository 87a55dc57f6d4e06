"""The probe objects: ``struct kprobe``, ``struct kretprobe``, uprobes and their consumers.

The same objects register on the live kernel (``kuprobe.live``) and on the reference model
(``kuprobe.model``). Field names and handler signatures are the kernel's
(include/linux/kprobes.h, include/linux/uprobes.h). Counters are read-only for users: the
backend that holds the probe updates them.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kuprobe.errors import KuprobeTypeError, ProbeError

if TYPE_CHECKING:
    from kuprobe.regs import PtRegs
    from kuprobe.task import Task

# include/linux/kprobes.h
KPROBE_FLAG_GONE = 1
KPROBE_FLAG_DISABLED = 2
KPROBE_FLAG_OPTIMIZED = 4
KPROBE_FLAG_FTRACE = 8
# include/linux/uprobes.h: what a consumer's handler may return
UPROBE_HANDLER_REMOVE = 1
# kernel/kprobes.c: register_kretprobe() refuses a larger per-instance data area
KRETPROBE_MAX_DATA_SIZE = 4096

PreHandler = Callable[["Kprobe", "PtRegs"], int]
PostHandler = Callable[["Kprobe", "PtRegs", int], None]
FaultHandler = Callable[["Kprobe", "PtRegs", int], int]
RetHandler = Callable[["KretprobeInstance", "PtRegs"], int]
UprobeHandler = Callable[["UprobeConsumer", "PtRegs"], int]
UretprobeHandler = Callable[["UprobeConsumer", int, "PtRegs"], int]
UprobeFilter = Callable[["UprobeConsumer", "Task"], bool]


CAPTURE_MAX_BYTES = 256  # per capture (kuprobe_event.h: KUPROBE_CAPTURE_BYTES)
CAPTURE_MAX = 4  # per probe (KUPROBE_CAPTURES)


@dataclass(frozen=True)
class Capture:
    """Memory a probe reads when it fires, for its handlers' ``copy_from_user`` and friends
    (kuprobe/uaccess.py), in the spirit of kprobe_events' fetch arguments
    (Documentation/trace/kprobetrace.rst: ``+OFFS(FETCHARG):string``).

    ``at``: where the address is — ``argN`` (the probed code's calling convention),
    ``retval``, a register by the kernel's name, or ``stackN`` (the N-th word up from the
    stack pointer); ``offset`` is added to it. ``kind``: ``"str"``, a NUL-terminated string of
    at most ``size`` bytes with its NUL, or ``"buf"``, ``size`` bytes. ``space``: ``"user"``,
    ``"kernel"``, or ``"auto"`` (kernel if the address's top bit is set). Live, the BPF program
    reads it on the spot; a handler's read of anything else is an error (EFAULT).
    """

    at: str
    offset: int = 0
    kind: str = "str"
    size: int = CAPTURE_MAX_BYTES
    space: str = "user"

    def __post_init__(self) -> None:
        if self.kind not in ("str", "buf"):
            raise ProbeError(errno.EINVAL, f"Capture kind {self.kind!r} is not 'str' or 'buf'")
        if self.space not in ("user", "kernel", "auto"):
            raise ProbeError(errno.EINVAL, f"Capture space {self.space!r}: user, kernel or auto")
        if not 0 < self.size <= CAPTURE_MAX_BYTES:
            raise ProbeError(
                errno.E2BIG if self.size > 0 else errno.EINVAL,
                f"Capture size {self.size} is outside 1..{CAPTURE_MAX_BYTES}",
            )


def check_captures(captures: tuple[Capture, ...], probe: object = None) -> tuple[Capture, ...]:
    captures = tuple(captures)
    if len(captures) > CAPTURE_MAX:
        raise ProbeError(
            errno.E2BIG, f"{len(captures)} captures; a probe has at most {CAPTURE_MAX}", probe=probe
        )
    for c in captures:
        if not isinstance(c, Capture):
            raise ProbeError(errno.EINVAL, f"not a Capture: {c!r}", probe=probe)
    return captures


@dataclass(eq=False)
class _Counted:
    """Counters the holding backend updates; users read them."""

    _hits: int = field(default=0, init=False, repr=False)
    _nmissed: int = field(default=0, init=False, repr=False)
    _lost: int = field(default=0, init=False, repr=False)
    _handler_errors: int = field(default=0, init=False, repr=False)
    _dropped: int = field(default=0, init=False, repr=False)
    # The backend (live or a model Machine) this object is registered with, or None.
    _owner: Any = field(default=None, init=False, repr=False)

    def _refresh(self) -> None:
        """Bring counters up to date while registered (the live backend reads its maps)."""
        sync = getattr(self._owner, "sync_counters", None)
        if sync is not None:
            sync(self)

    @property
    def hits(self) -> int:
        """How many times the probe fired (exact: counted where the trap is taken)."""
        self._refresh()
        return self._hits

    @property
    def nmissed(self) -> int:
        """Hits whose handlers did not run (reentrancy, an empty kretprobe pool …)."""
        self._refresh()
        return self._nmissed

    @property
    def lost(self) -> int:
        """Events that fired but could not be delivered to Python (buffer full)."""
        self._refresh()
        return self._lost

    @property
    def handler_errors(self) -> int:
        """Handler calls that raised (each is reported; dispatch goes on)."""
        return self._handler_errors

    @property
    def dropped(self) -> int:
        """Events recorded but never handed to a handler: an ``unregister_*(timeout=)`` that
        ran out, interpreter exit or SIGINT/SIGTERM (which stop within 2 s). With ``lost``,
        ``handler_errors`` and the handler's own calls it adds up to the hits."""
        return self._dropped

    @property
    def registered(self) -> bool:
        return self._owner is not None


@dataclass(eq=False)
class Kprobe(_Counted):
    """``struct kprobe``: a breakpoint on a kernel instruction.

    Give ``symbol_name`` (+ ``offset``) or ``addr``, not both. ``pre_handler(p, regs)`` runs
    before the probed instruction, ``post_handler(p, regs, flags)`` after it is single-stepped,
    ``fault_handler(p, regs, trapnr)`` if a handler faults.
    """

    symbol_name: str | None = None
    offset: int = 0
    addr: int | None = None
    pre_handler: PreHandler | None = None
    post_handler: PostHandler | None = None
    fault_handler: FaultHandler | None = None
    flags: int = 0
    capture: tuple[Capture, ...] = ()  # memory read when it fires (kuprobe/uaccess.py)
    stack: bool = False  # record the kernel stack at each hit (kuprobe/stacks.py)

    def __hash__(self) -> int:
        return id(self)

    @property
    def disabled(self) -> bool:
        return bool(self.flags & KPROBE_FLAG_DISABLED)


@dataclass(eq=False)
class Kretprobe(_Counted):
    """``struct kretprobe``: a probe on a function's return (and, optionally, its entry).

    ``entry_handler(ri, regs)`` runs at entry; a nonzero return means no ``handler`` for this
    call. ``handler(ri, regs)`` runs at return. ``maxactive`` instances may be in flight at once
    (0: the kernel's default); a call finding none free counts in ``nmissed``.
    """

    symbol_name: str | None = None
    offset: int = 0
    addr: int | None = None
    handler: RetHandler | None = None
    entry_handler: RetHandler | None = None
    maxactive: int = 0
    data_size: int = 0
    flags: int = 0
    capture: tuple[Capture, ...] = ()  # read at the return (kuprobe/uaccess.py)
    stack: bool = False  # record the kernel stack at the return (kuprobe/stacks.py)

    def __hash__(self) -> int:
        return id(self)


@dataclass(eq=False)
class KretprobeInstance:
    """``struct kretprobe_instance``: one call in flight, shared by entry and return handler."""

    rp: Kretprobe
    data: bytearray
    ret_addr: int = 0
    task: Task | None = None


@dataclass(eq=False)
class UprobeConsumer:
    """``struct uprobe_consumer``: what a uprobe calls.

    ``handler(uc, regs)`` at the breakpoint, ``ret_handler(uc, func, regs)`` when the probed
    function returns (a uretprobe), ``filter(uc, task)``: whether this consumer wants calls in
    that task. A handler returning ``UPROBE_HANDLER_REMOVE`` asks for no more calls from that
    process.
    """

    handler: UprobeHandler | None = None
    ret_handler: UretprobeHandler | None = None
    filter: UprobeFilter | None = None

    def __hash__(self) -> int:
        return id(self)


@dataclass(eq=False)
class Uprobe(_Counted):
    """A user-space probe: (inode, offset) of an executable file, and one consumer.

    ``offset`` alone is a file offset. With ``symbol_name`` it counts from the symbol's start
    and must fall on an instruction boundary. ``pid`` limits the probe to one process (in the
    kernel). ``ref_ctr_offset`` is the file offset of a USDT semaphore the kernel increments
    while the probe is registered.

    An offset must be provably an instruction boundary, decoded from the nearest function
    start the ELF file gives (.symtab, .dynsym, .eh_frame): a breakpoint inside an
    instruction corrupts the traced program. ``unsafe=True`` skips that proof, as bpftrace's
    ``--unsafe`` does (live backend).
    """

    path: str = ""
    offset: int | None = None
    symbol_name: str | None = None
    ref_ctr_offset: int = 0
    consumer: UprobeConsumer | None = None
    pid: int | None = None
    unsafe: bool = False
    capture: tuple[Capture, ...] = ()  # memory read at each hit, entry and return
    stack: bool = False  # record the user stack at each hit (kuprobe/stacks.py)
    _ret_hits: int = field(default=0, init=False, repr=False)
    _ret_lost: int = field(default=0, init=False, repr=False)
    _ret_dropped: int = field(default=0, init=False, repr=False)
    # Resolved at register time: (st_dev, st_ino) and the file offset of the probed insn.
    _inode: tuple[int, int] | None = field(default=None, init=False, repr=False)
    _file_offset: int | None = field(default=None, init=False, repr=False)

    def __hash__(self) -> int:
        return id(self)

    @property
    def ret_hits(self) -> int:
        """How many times the probed function returned (the uretprobe fired)."""
        self._refresh()
        return self._ret_hits

    @property
    def lost(self) -> int:
        """Entry events that fired but could not be delivered (buffer full); the return
        side's are ``ret_lost``."""
        self._refresh()
        return self._lost

    @property
    def ret_lost(self) -> int:
        """Return (uretprobe) events that could not be delivered (buffer full)."""
        self._refresh()
        return self._ret_lost

    @property
    def ret_dropped(self) -> int:
        """Return events recorded but never handed to ``ret_handler`` (see ``dropped``)."""
        return self._ret_dropped

    @property
    def inode(self) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the probed file once registered: the kernel's identity."""
        return self._inode

    @property
    def file_offset(self) -> int | None:
        """The probed instruction's offset in the file, once registered."""
        return self._file_offset


# --- the holding backend's verbs -----------------------------------------------------------
# A probe's owner, counters and resolved identity are written here only, as kernel/kprobes.c
# keeps struct kprobe's behind its own calls (kprobes_inc_nmissed_count() …). The live
# backend and the model call these; users read the properties above.

AnyProbe = Kprobe | Kretprobe | Uprobe


def owner(p: AnyProbe) -> Any:
    """The backend ``p`` is registered with, or None."""
    return p._owner


def set_owner(p: AnyProbe, holder: object) -> None:
    """``p`` is registered with ``holder`` (None: no longer registered)."""
    p._owner = holder


def inc_hits(p: AnyProbe) -> None:
    """The probe fired (the model counts each trap; live counts come from the maps)."""
    p._hits += 1


def inc_ret_hits(up: Uprobe) -> None:
    """The probed function returned through the uretprobe."""
    up._ret_hits += 1


def inc_nmissed(p: AnyProbe) -> None:
    """A hit whose handlers did not run (kernel/kprobes.c: kprobes_inc_nmissed_count(), and
    a kretprobe's ``rp->nmissed++`` when no instance is free)."""
    p._nmissed += 1


def inc_handler_errors(p: AnyProbe) -> int:
    """A handler raised; returns how many have, so the first can be reported."""
    p._handler_errors += 1
    return p._handler_errors


def inc_dropped(p: AnyProbe, *, ret: bool = False) -> None:
    """An event recorded but never handed to a handler (``ret``: a uretprobe's)."""
    if ret and isinstance(p, Uprobe):
        p._ret_dropped += 1
    else:
        p._dropped += 1


@dataclass(frozen=True)
class Counts:
    """A probe's counters as last set, without asking the backend (``set_counts``)."""

    hits: int
    nmissed: int
    lost: int
    ret_hits: int = 0
    ret_lost: int = 0


def counts(p: AnyProbe) -> Counts:
    if isinstance(p, Uprobe):
        return Counts(p._hits, p._nmissed, p._lost, p._ret_hits, p._ret_lost)
    return Counts(p._hits, p._nmissed, p._lost)


def set_counts(
    p: AnyProbe,
    *,
    hits: int | None = None,
    nmissed: int | None = None,
    lost: int | None = None,
    ret_hits: int | None = None,
    ret_lost: int | None = None,
) -> None:
    """The counters a live backend read from its maps (those given; the rest stay)."""
    if hits is not None:
        p._hits = hits
    if nmissed is not None:
        p._nmissed = nmissed
    if lost is not None:
        p._lost = lost
    if ret_hits is not None or ret_lost is not None:
        if not isinstance(p, Uprobe):
            raise KuprobeTypeError(f"only a uprobe has return counters, not {p!r:.60}")
        if ret_hits is not None:
            p._ret_hits = ret_hits
        if ret_lost is not None:
            p._ret_lost = ret_lost


def set_identity(up: Uprobe, inode: tuple[int, int], file_offset: int) -> None:
    """What register_uprobe() resolved: the file's (st_dev, st_ino) and the probed
    instruction's file offset, the kernel's identity of a uprobe."""
    up._inode, up._file_offset = inode, file_offset


def check_kretprobe_fields(rp: Kretprobe) -> None:
    """What kernel/kprobes.c: register_kretprobe() refuses before touching any probe: a
    kretprobe off a function's entry (kprobe_on_func_entry()), a negative maxactive, a
    data_size over KRETPROBE_MAX_DATA_SIZE. Live and model backends both apply it."""
    if not 0 <= rp.data_size <= KRETPROBE_MAX_DATA_SIZE:
        raise ProbeError(
            errno.E2BIG if rp.data_size > 0 else errno.EINVAL,
            f"data_size {rp.data_size} is outside 0..{KRETPROBE_MAX_DATA_SIZE}",
            probe=rp,
        )
    if rp.maxactive < 0:
        raise ProbeError(errno.EINVAL, f"maxactive {rp.maxactive} is negative", probe=rp)
    if rp.offset:
        raise ProbeError(
            errno.EINVAL,
            "a kretprobe must be on a function entry (offset 0)",
            probe=rp,
            hint="use a kprobe for other offsets",
        )


def check_handlers(probe: object, **handlers: object) -> None:
    """What a register function refuses at once rather than on every event: a handler, filter
    or consumer field that is set but cannot be called."""
    for name, h in handlers.items():
        if h is not None and not callable(h):
            raise ProbeError(
                errno.EINVAL,
                f"{name} must be callable or None, not {type(h).__name__} {h!r:.40}",
                probe=probe,
            )
