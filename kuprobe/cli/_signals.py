"""Ctrl-C and SIGTERM as a request to stop, not an exception at a random point.

While probes are registered, a KeyboardInterrupt raised inside the backend (in the middle
of a register or an unregister) could leave it half done. Inside ``stop_requested()`` the
first SIGINT/SIGTERM only sets the returned event, which the command's loop polls; a second
one raises KeyboardInterrupt as usual, for the impatient.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_requested() -> Iterator[threading.Event]:
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # only the main thread can handle signals
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    saved: dict[int, Any] = {s: signal.signal(s, handler) for s in _SIGNALS}
    try:
        yield stop
    finally:
        for s, previous in saved.items():
            signal.signal(s, previous)
