"""The task a trap was taken in: what a handler sees as ``current``."""

from __future__ import annotations

from kuprobe import context
from kuprobe.context import Task
from kuprobe.errors import OutsideHandlerError

__all__ = ["Task", "current"]


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
