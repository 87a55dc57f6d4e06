"""SIGINT/SIGTERM deferred while kuprobe creates or closes a BPF link.

kuprobe/live/api.py's handlers ask ``defer()`` first."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType


class SignalsDeferred:
    """SIGINT/SIGTERM wait while the main thread is inside: a KeyboardInterrupt raised between
    creating a BPF link and recording its fd, or between closing it and forgetting it, would
    leave a live probe nobody can remove (kuprobe/live/api.py's handlers ask defer()).
    Other threads never run Python signal handlers, so only the main thread counts."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: list[Callable[[], None]] = []

    def defer(self, fn: Callable[[], None]) -> bool:
        if self.depth:
            self.pending.append(fn)
            return True
        return False

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.depth += 1

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self.depth -= 1
        if self.depth == 0 and self.pending:
            pending, self.pending = self.pending, []
            for fn in pending:
                fn()
