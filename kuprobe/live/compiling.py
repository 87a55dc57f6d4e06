"""A ProbePool compiled on a thread of its own (kuprobe/live/register.py: prepare_pool())."""

from __future__ import annotations

import threading

from kuprobe.live.pool import ProbePool


class PendingPool:
    """A ProbePool being compiled on its own thread."""

    def __init__(self) -> None:
        self._pool: ProbePool | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kuprobe-compile", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._pool = ProbePool()
        except BaseException as e:  # raised again in the registering thread
            self._error = e

    def take(self) -> ProbePool:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._pool is not None
        return self._pool
