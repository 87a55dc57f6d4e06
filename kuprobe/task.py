"""The task a trap was taken in: what a handler sees as ``current``."""

from __future__ import annotations

from dataclasses import dataclass

from kuprobe import context
from kuprobe.errors import OutsideHandlerError


@dataclass(frozen=True, slots=True)
class Task:
    """``struct task_struct``, the part a probe handler reads, with the kernel's meanings:
    ``pid`` is the thread id, ``tgid`` the process (thread group) id, ``comm`` the name."""

    pid: int
    tgid: int
    comm: str


def current() -> Task:
    """The task whose trap is being handled (the kernel's ``current``).

    Valid inside a handler: in live mode the task the event came from, in the model the
    Machine's task (backends enter it: kuprobe/context.py). Outside a handler it raises
    ``OutsideHandlerError`` (a RuntimeError).
    """
    task = context.task()
    if task is None:
        raise OutsideHandlerError("current() is only defined inside a probe handler")
    return task
