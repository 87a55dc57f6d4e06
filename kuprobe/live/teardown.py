"""Unregistration: every step from a registered probe to one whose counters are final.

Unregistration stops the probe's slots (or detaches them: the kernel waits for programs in
flight), drains the ring buffer so every recorded event reaches its handler, and then reads
the final counters and frees the slots. A uprobe's links then close in the background
(kuprobe/live/closer.py). Registration, which undoes itself with ``_detach`` when it fails,
is in kuprobe/live/register.py.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

from kuprobe.errors import ProbeError
from kuprobe.live.closer import MAX_PENDING
from kuprobe.live.counters import read_profile, sync
from kuprobe.live.dispatch import SlotHandler
from kuprobe.live.membarrier import full_barrier
from kuprobe.live.messages import describe
from kuprobe.live.state import Attach, BackendState, Registration
from kuprobe.live.tracefs import remove_kprobe_event
from kuprobe.probes import AnyProbe, Uprobe, inc_dropped, set_owner

log = logging.getLogger("kuprobe")
# Interpreter exit and SIGINT/SIGTERM: how long events still queued get handled before the
# rest are counted in ``dropped``, and how long a handler already running is then waited for.
SHUTDOWN_TIMEOUT = 1.2
IN_FLIGHT_GRACE = 0.3


class TeardownOps(BackendState):
    """unregister(), unregister_many() and shutdown(), and the steps they share."""

    def _detach(self, reg: Registration) -> None:
        # Return probes first: no return event then arrives without its entry.
        for att in sorted(reg.attaches, key=lambda a: not a.ret):
            fds = (att.link_fd, att.perf_fd)
            att.link_fd = att.perf_fd = -1
            for fd in fds:
                if fd >= 0:
                    os.close(fd)
        if reg.tracefs_event and not reg.tracefs_removed:
            try:
                remove_kprobe_event(reg.tracefs_event)
            except OSError as e:
                log.warning("could not remove kuprobe/%s: %s", reg.tracefs_event, e)
            reg.tracefs_removed = True

    def unregister(self, probe: AnyProbe, timeout: float | None = None) -> None:
        self.unregister_many([probe], timeout=timeout)

    def unregister_many(
        self, probes: Sequence[AnyProbe], timeout: float | None = None, *, missing_ok: bool = False
    ) -> None:
        """Unregister several probes: detach all, drain, read final counters, free slots.

        Returns once every event recorded for them has been handled, and no handler of them
        runs afterwards; with ``timeout`` (seconds), events still queued when it runs out are
        counted in ``dropped`` instead (a handler call already running is waited for).

        kernel/events/uprobes.c: uprobe_unregister() waits for a grace period (20-90 ms here)
        per probe. Uprobes do not wait for it: their slots are stopped in the BPF map, the
        runs in progress are waited for (``_stop``), and the links close in the background,
        side by side (kuprobe/live/closer.py). Kprobes close theirs here, side by side, so a
        batch waits about once (as the kernel's uprobe_unregister_nosync() +
        uprobe_unregister_sync() do). The backend lock is held only to detach and to
        release, never while handlers are waited for: a handler may register or unregister
        meanwhile.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self.signals, self._lock:
            regs: list[Registration] = []
            for p in probes:
                r = self._regs.get(id(p)) or self._closing.get(id(p))
                if r is None and missing_ok:  # finished by another thread meanwhile
                    continue
                if r is None:
                    raise ProbeError(
                        errno.EINVAL, f"this {type(p).__name__} is not registered", probe=p
                    )
                regs.append(r)
            self._detach_all([r for r in regs if not r.detached])
        self._finish(regs, deadline)
        self.closer.flush(below=MAX_PENDING)

    def _detach_all(self, regs: Sequence[Registration]) -> None:
        """With the lock held and signals deferred: detach, note where each slot's events end
        in the ring, and move the registrations to ``_closing``."""
        if not regs:
            return
        # A uprobe with a semaphore (ref_ctr_offset, USDT) closes at once: the kernel lowers
        # the semaphore when the link goes, and the traced program sees it.
        stopped = self._stop(
            [r for r in regs if isinstance(r.probe, Uprobe) and not r.probe.ref_ctr_offset]
        )
        for r in stopped:
            r.detached = True
            for att in r.attaches:
                att.target = att.pool.ring.producer_pos()
                fds = (att.link_fd, att.perf_fd)
                att.link_fd = att.perf_fd = -1
                att.closing = True
                self.closer.close_later(fds, self._closed(att))
            self._regs.pop(id(r.probe), None)
            self._closing[id(r.probe)] = r
        regs = [r for r in regs if r not in stopped]
        if not regs:
            return
        profile = read_profile(regs)
        try:
            in_parallel(self._detach, regs)
        finally:
            # Whatever closed: no program of these slots runs any more.
            for r in regs:
                if all(a.link_fd < 0 and a.perf_fd < 0 for a in r.attaches):
                    r.profile = profile
                    r.detached = True
                    for att in r.attaches:
                        att.target = att.pool.ring.producer_pos()
                    self._regs.pop(id(r.probe), None)
                    self._closing[id(r.probe)] = r

    def _stop(self, regs: Sequence[Registration]) -> list[Registration]:
        """Stop the slots of ``regs`` without detaching them: KUPROBE_CFG_OFF makes every run
        of the program that starts later count and record nothing; then wait for the runs in
        progress (kuprobe_inflight), so every event of these slots is in the ring buffer and
        their counters are final. Returns the registrations stopped (all, or none where the
        kernel has no membarrier(2): those are detached by closing, as before).

        The pairing (Dekker's): a run increments its in-flight count with a fully ordered
        atomic, then reads the flags; this side stores the flag, runs a full barrier, then
        reads the counts. Either the run sees the flag, or this side sees the run."""
        atts = sorted((a for r in regs for a in r.attaches), key=lambda a: not a.ret)
        if not atts:
            return list(regs)
        try:
            for att in atts:  # return slots first: no return event then arrives without entry
                att.pool.set_off(att.slot, True)
        except Exception as e:  # BCC raises a bare Exception; closing detaches them anyway
            log.warning("kuprobe: could not stop a slot (%s); detaching by closing", e)
            return []
        if not full_barrier():
            return []
        pause = 0.00005
        while any(att.pool.inflight(att.slot) for att in atts):
            time.sleep(pause)  # a run preempted in its program: rare, and short
            pause = min(pause * 2, 0.002)
        return list(regs)

    def _closed(self, att: Attach) -> Callable[[], None]:
        """Called by the LinkCloser once ``att``'s link is closed: the slot may be reused."""

        def closed() -> None:
            with self._release_lock:
                att.closing = False
                wanted, att.release_wanted = att.release_wanted, False
            if wanted:
                self._free(att)

        return closed

    def _finish(self, regs: Sequence[Registration], deadline: float | None) -> None:
        """Wait (until ``deadline``) for the dispatcher to handle every event of the detached
        ``regs``, count the rest in ``dropped``, then make the counters final and free the
        slots. Idempotent: any thread that unregisters one of them may finish it.

        From a handler (the dispatcher thread) nothing can be waited for: the events still
        queued behind that handler are counted in ``dropped``, and the probe stays
        ``registered`` until the dispatcher has passed them (then its counters are final)."""
        todo = [r for r in regs if r.detached and not r.final]
        if self.dispatcher.on_dispatcher_thread():
            with self.signals, self._lock:
                for r in todo:
                    if not r.final and not r.dropping:
                        self._drop_rest(r)
                        sync(r, r.profile)
                        att = max(r.attaches, key=lambda a: a.target, default=None)
                        if att is None:
                            self._finalize(r)
                        else:
                            self.dispatcher.after(att.pool, att.target, self._finalizer(r))
            return
        drained = True
        try:
            for r in todo:
                for att in r.attaches:
                    drained = self.dispatcher.drain(att.pool, att.target, deadline) and drained
        except BaseException:  # KeyboardInterrupt: no handler of these runs any more
            drained = False
            raise
        finally:
            if not drained:
                with self.signals, self._lock:
                    for r in todo:
                        if not r.final and not r.dropping:
                            self._drop_rest(r)
                # a handler call already running: waited for, briefly
                grace = time.monotonic() + IN_FLIGHT_GRACE
                for r in todo:
                    for att in r.attaches:
                        self.dispatcher.drain(att.pool, att.target, grace)
            with self.signals, self._lock:
                for r in todo:
                    if not r.final:
                        sync(r, r.profile)
                        self._finalize(r)

    def _drop_rest(self, r: Registration) -> None:
        """Count every event of ``r`` still queued in ``dropped`` instead of handling it."""
        r.dropping = True
        for att in r.attaches:
            self.dispatcher.set_handler(att.pool, att.slot, _dropper(r.probe, att))

    def _finalizer(self, r: Registration) -> Callable[[], None]:
        def finalize() -> None:
            if not r.final:
                self._finalize(r)

        return finalize

    def _finalize(self, r: Registration) -> None:
        """Counters final (hits and lost are synced by the caller), slots free, owner cleared."""
        r.final = True
        p = r.probe
        try:
            self._free_slots(r)
        finally:  # whatever happened, the probe is not left half unregistered
            self._closing.pop(id(p), None)
            set_owner(p, None)
            r.done.set()

    def _free_slots(self, r: Registration) -> None:
        late = [a for a in r.attaches if not self.dispatcher.handled_past(a.pool, a.target)]
        if late:
            queued = sum(a.pool.ring.peek_words(a.target, 0).count(a.slot) for a in late)
            log.warning(
                "%s: a handler is still running; at least %d queued events were not handled "
                "(counted in dropped if the dispatcher gets past it)",
                describe(r.probe),
                queued,
            )
        if late:
            past = self.dispatcher.handled_past
            self._finished_late = [
                x
                for x in self._finished_late
                if not all(past(a.pool, a.target) for a in x.attaches)
            ] + [r]
        for att in r.attaches:
            if att in late:
                self.dispatcher.after(att.pool, att.target, self._releaser(att))
            else:
                self._release(att)
        p = r.probe
        dropped = p.dropped + (p.ret_dropped if isinstance(p, Uprobe) else 0)
        if dropped and not self.dispatcher.on_dispatcher_thread():
            log.warning(
                "%s: %d recorded events were not handled (unregister timed out, exit or a "
                "signal); counted in dropped",
                describe(p),
                dropped,
            )

    def _release(self, att: Attach) -> None:
        """No handler for the slot any more; the slot free once its link is closed."""
        self.dispatcher.set_handler(att.pool, att.slot, None)
        with self._release_lock:
            if att.closing:  # the LinkCloser calls back (``_closed``)
                att.release_wanted = True
                return
        self._free(att)

    @staticmethod
    def _free(att: Attach) -> None:
        att.pool.forget_removed(att.slot)
        att.pool.release(att.slot)

    def _releaser(self, att: Attach) -> Callable[[], None]:
        return lambda: self._release(att)

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT, *, close: bool = True) -> None:
        """Unregister everything, within ``timeout`` s (the rest counted in ``dropped``): at
        interpreter exit (``close``: and free the pools) and on SIGINT/SIGTERM."""
        with self.signals:
            with self._lock:  # other threads may be registering
                probes = [r.probe for r in (*self._regs.values(), *self._closing.values())]
            if probes:
                self.unregister_many(probes, timeout=timeout, missing_ok=True)
            # The links still closing: nothing of them is left in the kernel after this.
            self.closer.flush()
            if not close:
                return
            stuck = any(  # a handler already waited for in _finish(): not again
                not self.dispatcher.handled_past(a.pool, a.target)
                for r in self._finished_late
                for a in r.attaches
            )
            if not self.dispatcher.stop(timeout=0.0 if stuck else IN_FLIGHT_GRACE):
                log.warning("kuprobe: a handler is still running at exit; left to the OS")
                return  # the maps stay mapped: the kernel frees them with the process
            with self._lock:
                for pool in self._pools:
                    self.dispatcher.remove_pool(pool)
                    pool.close()
                self._pools.clear()


def _dropper(probe: AnyProbe, att: Attach) -> SlotHandler:
    """A slot handler that only counts: the events left when an unregister gave up waiting."""
    if att.ret and isinstance(probe, Uprobe):

        def drop_ret(chunk: memoryview, off: int, ts: int, ip: int, task: object) -> None:
            inc_dropped(probe, ret=True)

        return drop_ret

    def drop(chunk: memoryview, off: int, ts: int, ip: int, task: object) -> None:
        inc_dropped(probe)

    return drop


def in_parallel(fn: Callable[[Registration], None], regs: Sequence[Registration]) -> None:
    """``fn`` on each, side by side (plain threads: this also runs from atexit, where
    concurrent.futures refuses new work)."""
    if len(regs) <= 1:
        for r in regs:
            fn(r)
        return
    errors: list[BaseException] = []

    def run(r: Registration) -> None:
        try:
            fn(r)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(r,)) for r in regs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
