"""The terminal side of the dashboard: key presses, the refresh clock, log messages in place.

Log messages are shown inside the screen instead of scribbled over it."""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any


class Keys:
    """Single key presses from a terminal's stdin (cbreak mode), or nothing."""

    def __init__(self, stream: IO[str] | None) -> None:
        self._fd = stream.fileno() if stream is not None and stream.isatty() else None
        self._saved: list[Any] | None = None

    def __enter__(self) -> Keys:
        if self._fd is not None:
            import termios
            import tty

            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None and self._saved is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)

    def read(self, timeout: float, stop: threading.Event | None = None) -> str | None:
        """One key pressed within ``timeout`` seconds (waits on ``stop`` without a terminal)."""
        if self._fd is None:
            (stop or threading.Event()).wait(max(timeout, 0.0))
            return None
        ready, _w, _x = select.select([self._fd], [], [], max(timeout, 0.0))
        if not ready:
            return None
        data = os.read(self._fd, 32)
        return data.decode("utf-8", "replace")[:1] if data else None


def ticks(
    refresh: float, duration: float | None, keys: Keys, stop: threading.Event | None
) -> Iterator[str | None]:
    """Yields None at each refresh and every key pressed, until ``duration`` passes or
    ``stop`` is set. A key pressed comes before a refresh that is due: when each refresh
    takes longer than ``refresh`` (a slow machine, a flood), one is always due."""
    start = time.monotonic()
    next_tick = start
    while not (stop is not None and stop.is_set()):
        now = time.monotonic()
        if duration is not None and now - start >= duration:
            return
        if now >= next_tick:
            key = keys.read(0.0, stop)
            if key is not None:
                yield key
                continue
            next_tick = max(next_tick + refresh, now)
            yield None
            continue
        wait = next_tick - now
        if duration is not None:
            wait = min(wait, start + duration - now)
        key = keys.read(wait, stop)
        if key is not None:
            yield key


class _ToDeque(logging.Handler):
    def __init__(self, into: deque[str]) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(self.format(record).splitlines()[0])


@contextmanager
def log_to(into: deque[str]) -> Iterator[None]:
    """While the screen is the dashboard's, "kuprobe" log messages show inside it."""
    log = logging.getLogger("kuprobe")
    handler = _ToDeque(into)
    saved = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = saved
