"""The dispatcher: one thread that reads every pool's ring buffer in bulk and calls handlers.

Programs submit events with BPF_RB_NO_WAKEUP; the dispatcher polls every ``interval`` s and
decodes a whole batch per read (DESIGN.md: a callback and a wakeup per event cap delivery at
~50k-200k events/s here, bulk reads reach ~2M/s). ``drain(pool)`` returns once every event
committed before the call has been handled: the kernel's promise for unregister.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable

from kuprobe import context
from kuprobe.live.events import RECORDS, RINGBUF_HDR
from kuprobe.live.pool import ProbePool
from kuprobe.task import Task

log = logging.getLogger("kuprobe")

# handler(chunk, offset of the event in it, ts, func_ip, task)
SlotHandler = Callable[[memoryview, int, int, int, Task], None]
_TASK_CACHE_MAX = 65536


class Wakeup:
    """A wake-up call for the dispatcher thread, through an eventfd: ``set()`` takes no Python
    lock, so a signal handler that runs while the main thread is inside ``set()`` (SIGINT ->
    shutdown -> drain) can call it again; a ``threading.Event`` would deadlock there."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def set(self) -> None:
        os.eventfd_write(self._fd, 1)

    def wait(self, timeout: float) -> None:
        """Sleep until ``set()`` or ``timeout`` s, and consume the wake-up."""
        if select.select([self._fd], [], [], timeout)[0]:
            with contextlib.suppress(BlockingIOError):  # another reader took it
                os.eventfd_read(self._fd)


class Dispatcher:
    def __init__(self, *, interval: float = 0.002) -> None:
        self.interval = interval
        self._pools: list[ProbePool] = []
        self._handlers: dict[int, list[SlotHandler | None]] = {}
        self._handled: dict[int, int] = {}
        self._cond = threading.Condition()
        self._wake = Wakeup()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._tasks: dict[tuple[int, bytes], Task] = {}
        self._after: list[tuple[ProbePool, int, Callable[[], None]]] = []
        self.events = 0
        self.errors = 0  # exceptions that escaped a slot handler (each logged)

    # --- set-up, from the registering thread ---

    def add_pool(self, pool: ProbePool) -> None:
        with self._cond:
            self._handlers[id(pool)] = [None] * pool.nslots
            self._handled[id(pool)] = pool.ring.consumer_pos
            self._pools = [*self._pools, pool]
        self._ensure_thread()

    def remove_pool(self, pool: ProbePool) -> None:
        with self._cond:
            self._pools = [p for p in self._pools if p is not pool]
            self._handlers.pop(id(pool), None)
            self._handled.pop(id(pool), None)

    def set_handler(self, pool: ProbePool, slot: int, handler: SlotHandler | None) -> None:
        self._handlers[id(pool)][slot] = handler

    def on_dispatcher_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def after(self, pool: ProbePool, target: int, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the dispatcher thread once ``pool`` is handled past ``target``
        (at once if it is and this is not the dispatcher thread in a batch)."""
        with self._cond:
            if not self.handled_past(pool, target) or self.on_dispatcher_thread():
                self._after.append((pool, target, fn))
                self._wake.set()
                return
        fn()

    def handled_past(self, pool: ProbePool, target: int) -> bool:
        return self._handled.get(id(pool), target) >= target

    def drain(
        self, pool: ProbePool, target: int | None = None, deadline: float | None = None
    ) -> bool:
        """Return once every event committed to ``pool`` before now (or before ring position
        ``target``) has been handled: True; False if ``deadline`` (time.monotonic()) came
        first, the dispatcher is not running, or this is the dispatcher thread (a handler
        cannot wait for the events queued behind it)."""
        if target is None:
            target = pool.ring.producer_pos()
        if self.on_dispatcher_thread():
            return self.handled_past(pool, target)  # a handler cannot wait for itself
        with self._cond:
            self._wake.set()
            while not self.handled_past(pool, target) and self._alive():
                wait = 0.05
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        return False
                self._cond.wait(wait)
                self._wake.set()
        return self.handled_past(pool, target)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread; False if it was still inside a handler after ``timeout`` s."""
        self._stop = True
        self._wake.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=timeout)
            if t.is_alive():
                return False
        self._thread = None
        return True

    # --- the dispatcher thread ---

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _ensure_thread(self) -> None:
        if self._alive():
            return
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="kuprobe-dispatch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wake = self._wake
        while not self._stop:
            got = 0
            for pool in self._pools:
                try:
                    got += self._poll(pool)
                except BaseException as e:  # never die: every later event would vanish
                    self.errors += 1
                    log.error("kuprobe's dispatcher: %r; it goes on", e, exc_info=e)
            if not got:
                wake.wait(self.interval)

    def _task(self, pid_tgid: int, comm: bytes) -> Task:
        key = (pid_tgid, comm)
        task = self._tasks.get(key)
        if task is None:
            name = comm.split(b"\0", 1)[0].decode("utf-8", "replace")
            task = Task(pid_tgid & 0xFFFFFFFF, pid_tgid >> 32, name)  # bpf_get_current_pid_tgid()
            if len(self._tasks) >= _TASK_CACHE_MAX:
                self._tasks.clear()
            self._tasks[key] = task
        return task

    def _poll(self, pool: ProbePool) -> int:
        """Handle one batch: every record committed to ``pool``'s ring buffer by now."""
        chunk, n, size = pool.ring.read_any(RECORDS)  # a run of plain or captured events
        if n:
            self._handle(pool, chunk, size)
            self.events += n
        self._mark_handled(pool)
        return n

    def _handle(self, pool: ProbePool, chunk: memoryview, size: int) -> None:
        record, stride = RECORDS[size]
        handlers = self._handlers.get(id(pool))
        if handlers is None:
            return
        enter_task = context.enter_task
        last_pid_tgid, last_comm, task = -1, b"", None
        # the hot loop: fields of each record unpacked in C, a handler call per event
        off = RINGBUF_HDR  # of each event's data in ``chunk``
        for _len, _pg, slot, _fl, ts, ip, pid_tgid, comm in record.iter_unpack(chunk):
            h = handlers[slot]
            if h is not None:
                if pid_tgid != last_pid_tgid or comm != last_comm:
                    task = self._task(pid_tgid, comm)
                    enter_task(task)
                    last_pid_tgid, last_comm = pid_tgid, comm
                try:
                    h(chunk, off, ts, ip, task)
                except BaseException as e:  # the slot handlers count their own; a bug here
                    self.errors += 1
                    log.error("kuprobe: a slot handler raised %r", e, exc_info=e)
            off += stride
        context.leave_task(None)

    def _mark_handled(self, pool: ProbePool) -> None:
        end = pool.ring.consumer_pos
        if end > self._handled.get(id(pool), end):
            with self._cond:
                self._handled[id(pool)] = end
                self._cond.notify_all()
                due = [a for a in self._after if a[0] is pool and a[1] <= end]
                self._after = [a for a in self._after if a not in due]
            for _, _, fn in due:
                fn()
