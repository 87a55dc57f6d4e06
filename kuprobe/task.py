"""The task a trap was taken in: what a handler sees as ``current``."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from kuprobe.errors import OutsideHandlerError


@dataclass(frozen=True, slots=True)
class Task:
    """``struct task_struct``, the part a probe handler reads, with the kernel's meanings:
    ``pid`` is the thread id, ``tgid`` the process (thread group) id, ``comm`` the name."""

    pid: int
    tgid: int
    comm: str


class _Current(threading.local):
    task: Task | None = None


_state = _Current()


def current() -> Task:
    """The task whose trap is being handled (the kernel's ``current``).

    Valid inside a handler: in live mode the task the event came from, in the model the
    Machine's task. Outside a handler it raises ``OutsideHandlerError`` (a RuntimeError).
    """
    task = _state.task
    if task is None:
        raise OutsideHandlerError("current() is only defined inside a probe handler")
    return task


def set_current(task: Task | None) -> Task | None:
    """Make ``task`` current on this thread for the handler about to run; returns the old one."""
    previous = _state.task
    _state.task = task
    return previous
