"""The live backend's core: slots, attachments, unregistration, counters.

Every registered probe holds one or two slots (entry and/or return) of a compiled pool
(kuprobe/live/pool.py) and one attachment per slot: a BPF link whose cookie is the slot, on a
perf event or as a uprobe_multi link. Registration either completes or leaves nothing behind;
unregistration stops the probe's slots (or detaches them: the kernel waits for programs in
flight), drains the ring buffer so every recorded event reaches its handler, and then reads
the final counters. A uprobe's links then close in the background (kuprobe/live/closer.py).
The kinds of probe live in kuprobe/live/uprobe.py and kuprobe/live/kprobe.py.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from kuprobe.errors import ProbeError
from kuprobe.live import perf
from kuprobe.live.closer import MAX_PENDING, LinkCloser
from kuprobe.live.dispatch import Dispatcher, SlotHandler
from kuprobe.live.events import (
    KUPROBE_CFG_RET,
)
from kuprobe.live.pool import ProbePool
from kuprobe.probes import (
    Kprobe,
    Kretprobe,
    Uprobe,
    _Counted,
)

log = logging.getLogger("kuprobe")
AnyProbe = Kprobe | Kretprobe | Uprobe
# Interpreter exit and SIGINT/SIGTERM: how long events still queued get handled before the
# rest are counted in ``dropped``, and how long a handler already running is then waited for.
SHUTDOWN_TIMEOUT = 1.2
IN_FLIGHT_GRACE = 0.3


@dataclass
class Attach:
    pool: ProbePool
    slot: int
    ret: bool
    link_fd: int = -1  # closing it detaches the program (a BPF link)
    perf_fd: int = -1  # the kprobe/uprobe perf event under a perf-event link, if any
    target: int = -1  # the ring position past this slot's last event, once detached
    closing: bool = False  # its link is queued in the LinkCloser, the slot stopped meanwhile
    release_wanted: bool = False  # the slot is to be freed once the link has closed


@dataclass
class Registration:
    probe: AnyProbe
    attaches: list[Attach] = field(default_factory=list)
    tracefs_event: str | None = None  # kept after removal: kprobe_profile is read by name
    tracefs_removed: bool = False
    detached: bool = False  # no program of it records any more; it waits in BackendCore._closing
    dropping: bool = False  # its slots' handlers only count what is left, in dropped
    final: bool = False  # counters final, slots released, the probe's _owner cleared
    profile: dict[str, tuple[int, int]] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)


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


class BackendCore:
    """State and steps shared by every kind of live probe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pools: list[ProbePool] = []
        self._regs: dict[int, Registration] = {}
        self._closing: dict[int, Registration] = {}  # detached, events still being handled
        self.signals = SignalsDeferred()
        self._finished_late: list[Registration] = []  # final while a handler still ran
        self.dispatcher = Dispatcher()
        self.closer = LinkCloser()
        # Attach.closing and .release_wanted: the closer's callback never takes self._lock
        # (a SIGINT handler may wait for the closer while this thread holds it).
        self._release_lock = threading.RLock()
        self._event_seq = 0
        self._stale_checked = False
        self._reaper: subprocess.Popen[bytes] | None = None
        self._pool_pending: PendingPool | None = None
        atexit.register(self.shutdown)

    # --- capabilities --------------------------------------------------------------

    @staticmethod
    def require_root() -> None:
        if os.geteuid() != 0:
            raise ProbeError(
                errno.EPERM,
                "live probes need root (CAP_BPF and CAP_PERFMON)",
                hint="run the script with sudo, or use kuprobe.model.Machine, which needs none",
            )

    @staticmethod
    def require_pmu(name: str) -> None:
        if perf.pmu_type(name) is not None:
            return
        if name == "kprobe":
            raise ProbeError(
                errno.EOPNOTSUPP,
                f"this kernel ({os.uname().release}) has no kprobes (CONFIG_KPROBES is off)",
                hint="run the script in kuprobe's VM: `kuprobe vm run --share DIR -- python3 "
                "script.py`, or on a kernel with CONFIG_KPROBES and CONFIG_KPROBE_EVENTS",
            )
        raise ProbeError(
            errno.EOPNOTSUPP,
            f"this kernel ({os.uname().release}) has no uprobes (CONFIG_UPROBE_EVENTS is off)",
        )

    # --- pools ---------------------------------------------------------------------

    def prepare_pool(self) -> None:
        """Start the first pool's compile in the background, while the caller resolves its
        probe: the compile is arming's longest step, and BCC's compiler runs without the GIL
        (a ctypes call), so the two overlap. Its errors surface in ``_pool_with``."""
        with self._lock:
            if self._pools or self._pool_pending is not None or os.geteuid() != 0:
                return
            self._pool_pending = PendingPool()

    def _pool_with(self, n: int) -> ProbePool:
        for pool in self._pools:
            if pool.free_slots >= n:
                return pool
        with self.signals:  # a pool half made would never be dispatched
            pending, self._pool_pending = self._pool_pending, None
            # one compile; another only past DEFAULT_SLOTS probes at once
            pool = pending.take() if pending is not None else ProbePool()
            self._pools.append(pool)
            self.dispatcher.add_pool(pool)
        # BCC registers its own atexit cleanup per module, and atexit runs last-in first-out:
        # ours must run first, while the maps are still open.
        atexit.unregister(self.shutdown)
        atexit.register(self.shutdown)
        return pool

    # --- registration --------------------------------------------------------------

    def _claim(self, probe: _Counted) -> None:
        if probe._owner is not None:
            raise ProbeError(
                errno.EINVAL,
                f"this {type(probe).__name__} is already registered",
                probe=probe,
                hint="unregister it first, or make a new probe object",
            )

    def _attach_slot(
        self,
        reg: Registration,
        pool: ProbePool,
        *,
        flags: int,
        tgid: int,
        handler: SlotHandler | None,
        attach: Callable[[int, int], tuple[int, int]],
        uprobe_multi: bool = False,
        captures: Sequence[tuple[int, ...]] = (),
    ) -> Attach:
        """Take a slot, configure it (and its ``captures``: kuprobe/live/capture.py), and
        attach the program with ``attach(prog_fd, slot)`` (the slot is the link's cookie),
        which returns (link fd, perf event fd or -1)."""
        slot = pool.acquire(flags=flags, tgid=tgid)
        att = Attach(pool, slot, bool(flags & KUPROBE_CFG_RET))
        reg.attaches.append(att)
        if captures:  # before the link: no event of the slot goes without them
            pool.set_captures(slot, captures)
        self.dispatcher.set_handler(pool, slot, handler)
        prog_fd = pool.prog_fd(uprobe_multi=uprobe_multi)
        with self.signals:  # the link exists only once its fd is recorded
            att.link_fd, att.perf_fd = attach(prog_fd, slot)
        return att

    def _rollback(self, reg: Registration) -> None:
        with self.signals:
            self._detach(reg)
            for att in reg.attaches:
                self.dispatcher.set_handler(att.pool, att.slot, None)
                att.pool.release(att.slot)
            reg.attaches.clear()

    def _reporter(self, probe: _Counted) -> Callable[[BaseException], None]:
        def report(e: BaseException) -> None:
            probe._handler_errors += 1
            if probe._handler_errors == 1:
                log.error(
                    "handler of %s raised; counted in handler_errors, dispatch goes on",
                    describe(probe),
                    exc_info=e,
                )

        return report

    # --- unregistration ------------------------------------------------------------

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
                perf.remove_kprobe_event(reg.tracefs_event)
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
        profile = self._read_profile(regs)
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
        if not perf.full_barrier():
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
                        self._sync(r, r.profile)
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
                        self._sync(r, r.profile)
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
            p._owner = None
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
        dropped = p._dropped + (p._ret_dropped if isinstance(p, Uprobe) else 0)
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

    def _read_profile(self, regs: Sequence[Registration]) -> dict[str, tuple[int, int]]:
        if any(r.tracefs_event for r in regs):
            return perf.kprobe_profile()
        return {}

    def _sync(self, reg: Registration, profile: dict[str, tuple[int, int]] | None = None) -> None:
        hits = ret_hits = lost = ret_lost = 0
        for att in reg.attaches:
            h, lo = att.pool.counts(att.slot)
            if att.ret:
                ret_hits += h
                ret_lost += lo
            else:
                hits += h
                lost += lo
        p = reg.probe
        if isinstance(p, Uprobe):
            if ret_lost > p._ret_lost:
                log.warning("%s: %d return events lost", describe(p), ret_lost)
            p._hits, p._ret_hits, p._ret_lost = hits, ret_hits, ret_lost
        elif isinstance(p, Kretprobe):
            lost += ret_lost
            p._hits = ret_hits
            if reg.tracefs_event:
                prof = profile if profile is not None else perf.kprobe_profile()
                p._nmissed = prof.get(reg.tracefs_event, (0, p._nmissed))[1]
        else:
            p._hits = hits
        if lost > p._lost:
            log.warning(
                "%s: %d events lost (the ring buffer refused a reservation: full or contended)",
                describe(p),
                lost,
            )
        p._lost = lost

    def sync_counters(self, probe: _Counted) -> None:
        """Refresh the counters of a registered probe from the kernel's maps."""
        reg = self._regs.get(id(probe))
        if reg is not None and not reg.final:
            self._sync(reg)

    def registered(self) -> list[AnyProbe]:
        with self._lock:
            return [r.probe for r in self._regs.values()]

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


def _dropper(probe: AnyProbe, att: Attach) -> SlotHandler:
    """A slot handler that only counts: the events left when an unregister gave up waiting."""
    if att.ret and isinstance(probe, Uprobe):

        def drop_ret(chunk: memoryview, off: int, ts: int, ip: int, task: object) -> None:
            probe._ret_dropped += 1

        return drop_ret

    def drop(chunk: memoryview, off: int, ts: int, ip: int, task: object) -> None:
        probe._dropped += 1

    return drop


def perf_link(perf_fd: int, prog_fd: int, slot: int) -> tuple[int, int]:
    """The program on a kprobe/uprobe perf event through a link whose cookie is the slot."""
    return perf.link_perf_event(perf_fd, prog_fd, slot), perf_fd


def describe(p: object) -> str:
    """A probe in a few words: ``uprobe /bin/bash:readline+0x4``, ``kretprobe do_sys_open``."""
    if isinstance(p, Uprobe):
        where = p.symbol_name or ""
        if p.offset:
            where = f"{where}+{p.offset:#x}" if where else f"{p.offset:#x}"
        return f"uprobe {p.path}:{where}"
    if isinstance(p, Kprobe | Kretprobe):
        kind = "kprobe" if isinstance(p, Kprobe) else "kretprobe"
        where = kname(p.symbol_name, p.offset) if p.symbol_name else f"{p.addr or 0:#x}"
        return f"{kind} {where}"
    return type(p).__name__


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


def kname(sym: str | None, off: int) -> str:
    if sym is None:
        return f"{off:#x}"
    return f"{sym}+{off}" if off else sym


ENOTSUPP = 524  # include/linux/errno.h: kernel-internal, e.g. uprobes on an int3
_ERRNO_TEXT = {
    errno.ENOENT: "no such symbol in the kernel (see /proc/kallsyms)",
    errno.EILSEQ: "the address is inside an instruction",
    errno.EINVAL: "the kernel refused this address (not text, or blacklisted for kprobes)",
    errno.EBUSY: "the address is busy (another kind of probe owns it)",
    errno.EPERM: "not permitted (root with CAP_BPF/CAP_PERFMON needed; lockdown?)",
    errno.EACCES: "permission denied",
    errno.ESRCH: "no such process",
    errno.EOPNOTSUPP: "not supported by this kernel",
    errno.ENOSPC: "the kernel has no room for more probes",
    ENOTSUPP: "the kernel cannot probe this instruction",
}


def attach_error(e: OSError, probe: object, where: str) -> ProbeError:
    if isinstance(e, ProbeError):
        return e
    code = e.errno or errno.EIO
    text = _ERRNO_TEXT.get(code, os.strerror(code))
    if code == ENOTSUPP:
        code = errno.EOPNOTSUPP
    return ProbeError(code, f"{where}: {text}", probe=probe)
