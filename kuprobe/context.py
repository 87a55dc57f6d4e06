"""The context a probe handler runs in, one per thread.

It holds the task the trap was taken in and what the hit recorded for the handler to read.

The types of what it holds, and one thread-local, owned here. A backend enters it around the
handlers of a hit and leaves it after: ``enter_task`` / ``leave_task`` the task (live: the
dispatcher, per event; the model: its trap), ``enter_hit`` / ``leave_hit`` the memory and
the stacks (live: a probe's captures, kuprobe/live/capture.py; the model: its emulated
memory). Each ``enter_*`` returns what it replaced, and its ``leave_*`` puts that back. The
handler's calls read it through ``task()`` (``current()``, kuprobe/task.py), ``memory()``
(``copy_from_user()`` and friends, kuprobe/uaccess.py) and ``stacks()``
(``stack_trace_save()``, kuprobe/stacks.py); outside a handler each is None.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Task:
    """``struct task_struct``, the part a probe handler reads, with the kernel's meanings:
    ``pid`` is the thread id, ``tgid`` the process (thread group) id, ``comm`` the name."""

    pid: int
    tgid: int
    comm: str


class MemoryAtHit(Protocol):
    """What a backend gives the handler of one hit (``enter_hit``): ``read`` raises
    ProbeError(EFAULT)."""

    def read(self, addr: int, n: int, *, user: bool) -> bytes: ...
    def read_str(self, addr: int, count: int, *, user: bool) -> bytes: ...


class StacksAtHit:
    """The stacks a live event carries (``enter_hit``): ``user`` and ``kernel`` fetch the
    addresses."""

    __slots__ = ("kernel", "user")

    def __init__(
        self, user: Callable[[], list[int]] | None, kernel: Callable[[], list[int]] | None
    ) -> None:
        self.user, self.kernel = user, kernel


class _Context(threading.local):
    task: Task | None = None
    memory: MemoryAtHit | None = None
    stacks: StacksAtHit | None = None


_context = _Context()


def enter_task(task: Task | None) -> Task | None:
    """Backends: ``task`` is current on this thread for the handlers about to run; returns
    the task it replaces, for ``leave_task``."""
    previous = _context.task
    _context.task = task
    return previous


def leave_task(previous: Task | None) -> None:
    """Backends: the handlers have run; ``previous`` (what ``enter_task`` returned) is
    current again."""
    _context.task = previous


def enter_hit(
    memory: MemoryAtHit | None, stacks: StacksAtHit | None = None
) -> tuple[MemoryAtHit | None, StacksAtHit | None]:
    """Backends: the memory and the stacks of the hit whose handler is about to run; returns
    those it replaces, for ``leave_hit``."""
    previous = _context.memory, _context.stacks
    _context.memory, _context.stacks = memory, stacks
    return previous


def leave_hit(previous: tuple[MemoryAtHit | None, StacksAtHit | None]) -> None:
    """Backends: the handler has run; ``previous`` (what ``enter_hit`` returned) is the hit's
    context again."""
    _context.memory, _context.stacks = previous


def task() -> Task | None:
    """The task whose trap this thread is handling, or None outside a handler."""
    return _context.task


def memory() -> MemoryAtHit | None:
    """The memory the hit being handled recorded, or None (outside a handler, or a probe
    that captured none)."""
    return _context.memory


def stacks() -> StacksAtHit | None:
    """The stacks the hit being handled recorded, or None (outside a handler, or a probe
    without ``stack=True``)."""
    return _context.stacks
