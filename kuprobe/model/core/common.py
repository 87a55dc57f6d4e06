"""What the generic cores need from a Machine, and the exceptions that steer its traps."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import ne
from typing import TYPE_CHECKING, Any, Protocol, overload

from kuprobe import context
from kuprobe.errors import KuprobeError
from kuprobe.probes import inc_handler_errors
from kuprobe.regs import PtRegs
from kuprobe.task import Task
from kuprobe.uaccess import EmulatedMemory

log = logging.getLogger("kuprobe.model")

if TYPE_CHECKING:
    from kuprobe.elf import ElfImage
    from kuprobe.model.arch.base import Arch
    from kuprobe.model.semantics import Semantics


class ModelError(KuprobeError, RuntimeError):
    """The emulated run cannot go on (bad fetch, bound exceeded, a kernel oops …)."""


class ProcessSignalled(ModelError):
    """The task was killed by a signal (SIGSEGV, SIGTRAP, a fatal signal …)."""

    def __init__(self, signo: int, message: str) -> None:
        super().__init__(message)
        self.signo = signo


class HandlerAbandoned(BaseException):
    """A handler faulted and its fault_handler did not fix it: unwind the handler (the patch
    "Kprobes- robust fault handling for i386")."""


class Restart(BaseException):
    """Stop the CPU and go on at ``regs`` (a fault fixed up the trapped instruction)."""

    def __init__(self, regs: PtRegs, before: list[int]) -> None:
        super().__init__()
        self.regs = regs
        self.before = before  # the values at the trap: only what changed is written back


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1 us more per event
class TraceEvent:
    """One entry of ``Machine.trace``: a trap, a handler call or a state change, in order."""

    seq: int
    kind: str  # "int3", "kprobe", "singlestep", "status", "fault", "uprobe", "utask" …
    addr: int
    status: str = ""  # the kprobe_ctlblk or utask state after the event
    probe: Any = None
    detail: str = ""

    def __str__(self) -> str:
        parts = [f"{self.seq:6d} {self.kind:<12} {self.addr:#x}"]
        if self.status:
            parts.append(self.status)
        if self.detail:
            parts.append(self.detail)
        return " ".join(parts)


# The registers an arch hook changed, as recorded (field names, values before, values after,
# a prefix), written as ``name old->new`` only when the trace is read (it is on for every
# hit, and read for few)
RegsChange = tuple[tuple[str, ...], Sequence[int], Sequence[int], str]
Detail = str | RegsChange  # an event's detail as recorded


def regs_changed(
    names: Sequence[str], before: Sequence[int], after: Sequence[int], prefix: str = ""
) -> str:
    """For the trace: the registers that differ between ``before`` and ``after`` (values in
    pt_regs order), ``name old->new`` each."""
    changed = compress(range(len(after)), map(ne, before, after))  # compared in C
    return prefix + " ".join(f"{names[i]} {before[i]:#x}->{after[i]:#x}" for i in changed)


class Trace(Sequence[TraceEvent]):
    """``Machine.trace``: kept as plain tuples while running, TraceEvents when read.

    A list-like sequence (len, index, slice, iterate); ``clear()`` empties it and sequence
    numbers go on from where they were.
    """

    __slots__ = ("_base", "_probe_index", "_probes", "_raw")

    def __init__(self) -> None:
        # An event is one flat tuple of str and int, which the GC stops tracking (a trace of
        # millions of events then costs the full collections nothing): its probe is its
        # index in _probes (-1: none), a RegsChange is spread into it (a tuple inside a
        # tuple keeps the GC tracking both)
        self._raw: list[tuple[Any, ...]] = []
        self._probes: list[Any] = []
        self._probe_index: dict[int, int] = {}  # id(probe) -> its index (_probes keeps it)
        self._base = 0

    def add(self, kind: str, addr: int, status: str, probe: Any, detail: Detail) -> None:
        ref = -1
        if probe is not None:
            ref = self._probe_index.setdefault(id(probe), len(self._probes))
            if ref == len(self._probes):
                self._probes.append(probe)
        if isinstance(detail, str):
            self._raw.append((kind, addr, status, ref, detail))
        else:
            names, before, after, prefix = detail
            self._raw.append((kind, addr, status, ref, prefix, names, *before, *after))

    def clear(self) -> None:
        self._base += len(self._raw)
        self._raw.clear()
        self._probes.clear()
        self._probe_index.clear()

    def __len__(self) -> int:
        return len(self._raw)

    @overload
    def __getitem__(self, index: int) -> TraceEvent: ...
    @overload
    def __getitem__(self, index: slice) -> list[TraceEvent]: ...
    def __getitem__(self, index: int | slice) -> TraceEvent | list[TraceEvent]:
        if isinstance(index, slice):
            return [self._event(i) for i in range(*index.indices(len(self._raw)))]
        if index < 0:
            index += len(self._raw)
        if not 0 <= index < len(self._raw):
            raise IndexError(index)
        return self._event(index)

    def _event(self, i: int) -> TraceEvent:
        kind, addr, status, ref, detail, *change = self._raw[i]
        if change:  # a RegsChange: the names, then the values before and after
            names, n = change[0], len(change[0])
            detail = regs_changed(names, change[1 : n + 1], change[n + 1 :], detail)
        probe = self._probes[ref] if ref >= 0 else None
        return TraceEvent(self._base + i + 1, kind, addr, status, probe, detail)

    def __repr__(self) -> str:
        return f"<Trace of {len(self._raw)} events>"

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self)


class MachineLike(Protocol):
    """The part of a Machine the cores use."""

    hooks: Arch
    arch: str
    semantics: Semantics  # which kernel's rules (kuprobe.model.semantics)
    trace_enabled: bool
    strict: bool
    load_bias: int  # where an ET_DYN file was put (0 for ET_EXEC)
    task: Task
    image: ElfImage

    def read(self, addr: int, size: int) -> bytes: ...
    def write(self, addr: int, data: bytes) -> None: ...
    def record(
        self, kind: str, addr: int, status: str = "", probe: Any = None, detail: Detail = ""
    ) -> None: ...
    def handler_error(self, probe: Any, exc: BaseException) -> None: ...
    def force_sig(self, signo: int, why: str = "") -> None: ...
    def fill_stack(self, regs: PtRegs) -> None: ...


def call_handler(m: MachineLike, probe: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a user handler as the trapped task's kernel would: ``current`` set, errors counted.

    A handler that raises is counted (``handler_errors``), logged the first time, and
    treated as returning 0, as the live side's dispatcher does; the exception is kept in
    ``Machine.errors``. A Machine loaded with ``strict=True`` lets it propagate instead (the
    call fails with it: what a test of handler logic wants). A ModelError (the run itself
    cannot go on) always propagates.
    """
    for a in args:
        if isinstance(a, PtRegs):
            m.fill_stack(a)
    previous = context.enter_task(m.task)
    # kuprobe/uaccess.py: copy_from_user() and friends read the emulated memory at the hit
    previous_hit = context.enter_hit(EmulatedMemory(m.read))
    try:
        return fn(*args)
    except ModelError:  # the emulated run cannot go on (a kernel BUG, a lost step …)
        raise
    except Exception as e:
        if m.strict:
            raise
        if inc_handler_errors(probe) == 1:
            log.error("a handler of %r raised; counted in handler_errors, the run goes on",
                      probe, exc_info=e)  # fmt: skip
        m.handler_error(probe, e)
        return 0
    finally:
        context.leave_task(previous)
        context.leave_hit(previous_hit)
