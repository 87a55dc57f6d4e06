"""Closing BPF links in the background, side by side.

Closing the last fd of a uprobe's link runs the kernel's detach, which waits for a grace
period before it returns (kernel/trace/bpf_trace.c: bpf_uprobe_multi_link_release() ->
bpf_uprobe_unregister() -> uprobe_unregister_sync(); kernel/events/uprobes.c:
uprobe_unregister_sync() waits for synchronize_rcu_tasks_trace() and the uretprobes' SRCU):
20-90 ms each here. unregister_uprobe() does not wait for it: it stops the slot in the BPF
map first (the program then drops its events), so the link only has to go eventually. The
closer takes every link queued meanwhile and closes them at once, one thread each, so they
share their grace periods; then it calls each one's ``done`` (the slot is free for reuse only
then: the old link's cookie still names it).

Nothing is left in the kernel if the process dies meanwhile, even by SIGKILL: the kernel
closes its fds on exit, which detaches the links as any close does.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger("kuprobe")
MAX_SIDE_BY_SIDE = 64  # threads closing at once
MAX_PENDING = 64  # past this many links not closed yet, unregister waits (a loop of register
# and unregister would otherwise outrun the grace periods, and exhaust the slots)


class LinkCloser:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[tuple[tuple[int, ...], Callable[[], None]]] = []
        self._busy = 0  # closes taken from the queue, not done yet
        self._thread: threading.Thread | None = None

    def close_later(self, fds: Sequence[int], done: Callable[[], None]) -> None:
        """Close ``fds`` (in order) in the background, then call ``done`` on the closer."""
        with self._cond:
            self._queue.append((tuple(fd for fd in fds if fd >= 0), done))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="kuprobe-close", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._busy

    def flush(self, timeout: float | None = None, *, below: int = 1) -> bool:
        """Wait until fewer than ``below`` queued links are still to close (every one, by
        default); False if ``timeout`` s ran out first."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._queue) + self._busy < below, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                batch = self._queue[:MAX_SIDE_BY_SIDE]
                del self._queue[: len(batch)]
                self._busy += len(batch)
            threads = [threading.Thread(target=self._close, args=item) for item in batch[1:]]
            for t in threads:
                t.start()
            self._close(*batch[0])
            for t in threads:
                t.join()
            with self._cond:
                self._busy -= len(batch)
                self._cond.notify_all()

    @staticmethod
    def _close(fds: tuple[int, ...], done: Callable[[], None]) -> None:
        for fd in fds:
            try:
                os.close(fd)
            except OSError as e:  # never: the fd was ours alone
                log.warning("kuprobe: closing BPF link fd %d: %s", fd, e)
        try:
            done()
        except BaseException as e:
            log.error("kuprobe: releasing a slot after its link closed: %r", e, exc_info=e)
