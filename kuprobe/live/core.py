"""The live backend's core: slots, attachments, unregistration, counters.

Every registered probe holds one or two slots (entry and/or return) of a compiled pool
(kuprobe/live/pool.py) and one attachment per slot: a BPF link whose cookie is the slot, on a
perf event or as a uprobe_multi link. Registration either completes or leaves nothing behind;
unregistration detaches (the kernel waits for programs in flight), drains the ring buffer so
every recorded event reaches its handler, and then reads the final counters. The kinds of
probe live in kuprobe/live/uprobe.py and kuprobe/live/kprobe.py.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kuprobe.errors import ProbeError
from kuprobe.live import perf
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


@dataclass
class Attach:
    pool: ProbePool
    slot: int
    ret: bool
    link_fd: int = -1  # closing it detaches the program (a BPF link)
    perf_fd: int = -1  # the kprobe/uprobe perf event under a perf-event link, if any


@dataclass
class Registration:
    probe: AnyProbe
    attaches: list[Attach] = field(default_factory=list)
    tracefs_event: str | None = None  # kept after removal: kprobe_profile is read by name
    tracefs_removed: bool = False
    final: bool = False


class BackendCore:
    """State and steps shared by every kind of live probe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pools: list[ProbePool] = []
        self._regs: dict[int, Registration] = {}
        self.dispatcher = Dispatcher()
        self._event_seq = 0
        self._stale_checked = False
        self._reaper: subprocess.Popen[bytes] | None = None
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

    def _pool_with(self, n: int) -> ProbePool:
        for pool in self._pools:
            if pool.free_slots >= n:
                return pool
        pool = ProbePool()  # one compile; another only past DEFAULT_SLOTS probes at once
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
    ) -> Attach:
        """Take a slot, configure it, and attach the program with ``attach(prog_fd, slot)``
        (the slot is the link's cookie), which returns (link fd, perf event fd or -1)."""
        slot = pool.acquire(flags=flags, tgid=tgid)
        att = Attach(pool, slot, bool(flags & KUPROBE_CFG_RET))
        reg.attaches.append(att)
        self.dispatcher.set_handler(pool, slot, handler)
        att.link_fd, att.perf_fd = attach(pool.prog_fd(uprobe_multi=uprobe_multi), slot)
        return att

    def _rollback(self, reg: Registration) -> None:
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
            for fd in (att.link_fd, att.perf_fd):
                if fd >= 0:
                    os.close(fd)
            att.link_fd = att.perf_fd = -1
        if reg.tracefs_event and not reg.tracefs_removed:
            try:
                perf.remove_kprobe_event(reg.tracefs_event)
            except OSError as e:
                log.warning("could not remove kuprobe/%s: %s", reg.tracefs_event, e)
            reg.tracefs_removed = True

    def unregister(self, probe: AnyProbe) -> None:
        self.unregister_many([probe])

    def unregister_many(self, probes: Sequence[AnyProbe]) -> None:
        """Unregister several probes: detach all, drain, read final counters, free slots.

        kernel/events/uprobes.c: uprobe_unregister() waits for an SRCU grace period (~0.1 s
        here) per probe; a batch closes its perf events side by side, so it waits about once
        (as the kernel's own uprobe_unregister_nosync() + uprobe_unregister_sync() do).
        """
        with self._lock:
            regs = [self._regs.pop(id(p), None) for p in probes]
            for p, r in zip(probes, regs, strict=True):
                if r is None and p._owner is not self:
                    raise ProbeError(
                        errno.EINVAL, f"this {type(p).__name__} is not registered", probe=p
                    )
            todo = [r for r in regs if r is not None]
            profile = self._read_profile(todo)
            in_parallel(self._detach, todo)
            # The perf events are closed: no program of these slots runs any more.
            for pool in {id(a.pool): a.pool for r in todo for a in r.attaches}.values():
                self.dispatcher.drain(pool)
            for r in todo:
                self._sync(r, profile)
                r.final = True
                for att in r.attaches:
                    self.dispatcher.set_handler(att.pool, att.slot, None)
                    att.pool.forget_removed(att.slot)
                    att.pool.release(att.slot)
                r.probe._owner = None

    def _read_profile(self, regs: Sequence[Registration]) -> dict[str, tuple[int, int]]:
        if any(r.tracefs_event for r in regs):
            return perf.kprobe_profile()
        return {}

    def _sync(self, reg: Registration, profile: dict[str, tuple[int, int]] | None = None) -> None:
        hits = ret_hits = lost = 0
        for att in reg.attaches:
            h, lo = att.pool.counts(att.slot)
            lost += lo
            if att.ret:
                ret_hits += h
            else:
                hits += h
        p = reg.probe
        if isinstance(p, Uprobe):
            p._hits, p._ret_hits = hits, ret_hits
        elif isinstance(p, Kretprobe):
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
        return [r.probe for r in self._regs.values()]

    def shutdown(self) -> None:
        """Unregister everything (atexit, SIGINT/SIGTERM) and free the pools."""
        with self._lock:
            if self._regs:
                self.unregister_many(self.registered())
            self.dispatcher.stop()
            for pool in self._pools:
                self.dispatcher.remove_pool(pool)
                pool.close()
            self._pools.clear()


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
