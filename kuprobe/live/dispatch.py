"""The dispatcher: one thread that reads every pool's ring buffer in bulk and calls handlers.

Programs submit events with BPF_RB_NO_WAKEUP; the dispatcher polls every ``interval`` s and
decodes a whole batch per read (DESIGN.md: a callback and a wakeup per event cap delivery at
~50k-200k events/s here, bulk reads reach ~2M/s). ``drain(pool)`` returns once every event
committed before the call has been handled: the kernel's promise for unregister.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kuprobe.live.events import EVENT_SIZE, RECORD, RECORD_STRIDE, RINGBUF_HDR
from kuprobe.live.pool import ProbePool
from kuprobe.task import Task, _state

log = logging.getLogger("kuprobe")

# handler(chunk, offset of the event in it, ts, func_ip, task)
SlotHandler = Callable[[memoryview, int, int, int, Task], None]
_TASK_CACHE_MAX = 65536


class Dispatcher:
    def __init__(self, *, interval: float = 0.002) -> None:
        self.interval = interval
        self._pools: list[ProbePool] = []
        self._handlers: dict[int, list[SlotHandler | None]] = {}
        self._handled: dict[int, int] = {}
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._tasks: dict[tuple[int, bytes], Task] = {}
        self.events = 0

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

    def drain(self, pool: ProbePool) -> None:
        """Return once every event committed to ``pool`` before now has been handled."""
        target = pool.ring.producer_pos()
        if self.on_dispatcher_thread():
            # unregister from inside a handler: handle the rest of the ring here, in order.
            outer = _state.task
            try:
                while self._handled.get(id(pool), target) < target:
                    if not self._poll(pool):
                        break
            finally:
                _state.task = outer
            return
        with self._cond:
            self._wake.set()
            while self._handled.get(id(pool), target) < target and self._alive():
                self._cond.wait(0.05)
                self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)
        self._thread = None

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
                got += self._poll(pool)
            if not got:
                wake.wait(self.interval)
                wake.clear()

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
        chunk, n = pool.ring.read(EVENT_SIZE)
        if n:
            handlers = self._handlers.get(id(pool))
            if handlers is not None:
                state = _state
                last_pid_tgid, last_comm, task = -1, b"", None
                off = RINGBUF_HDR  # of each event's data in ``chunk``
                # the hot loop: fields of each record unpacked in C, a handler call per event
                for _len, _pg, slot, _fl, ts, ip, pid_tgid, comm in RECORD.iter_unpack(chunk):
                    h = handlers[slot]
                    if h is not None:
                        if pid_tgid != last_pid_tgid or comm != last_comm:
                            task = self._task(pid_tgid, comm)
                            state.task = task
                            last_pid_tgid, last_comm = pid_tgid, comm
                        h(chunk, off, ts, ip, task)
                    off += RECORD_STRIDE
                state.task = None
            self.events += n
        end = pool.ring.consumer_pos
        if end > self._handled.get(id(pool), end):
            with self._cond:
                self._handled[id(pool)] = end
                self._cond.notify_all()
        return n
