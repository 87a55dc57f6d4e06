"""The live backend: probe objects -> pool slots -> perf events, and events -> handlers.

Each registered probe holds one or two slots of a compiled pool (entry and/or return) and one
perf event per slot. Registration either completes or leaves nothing behind; unregistration
detaches (the kernel waits for programs in flight), drains the ring buffer so every recorded
event reaches its handler, and then reads the final counters.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kuprobe.errors import ProbeError
from kuprobe.live import perf
from kuprobe.live.dispatch import Dispatcher, SlotHandler
from kuprobe.live.events import (
    KUPROBE_CFG_KERNEL,
    KUPROBE_CFG_REMOVABLE,
    KUPROBE_CFG_RET,
    KUPROBE_CFG_STREAM,
    host_arch,
    live_regs_parts,
    regs_factory,
)
from kuprobe.live.pool import ProbePool
from kuprobe.probes import (
    KPROBE_FLAG_DISABLED,
    KRETPROBE_MAX_DATA_SIZE,
    UPROBE_HANDLER_REMOVE,
    Kprobe,
    Kretprobe,
    KretprobeInstance,
    Uprobe,
    _Counted,
)
from kuprobe.regs import instruction_pointer
from kuprobe.task import Task

log = logging.getLogger("kuprobe")
AnyProbe = Kprobe | Kretprobe | Uprobe
# kernel/kprobes.c: register_kretprobe() default maxactive (max(10, 2 * num_possible_cpus()))
KRETPROBE_DEFAULT_MAXACTIVE = max(10, 2 * (os.cpu_count() or 1))


@dataclass
class _Attach:
    pool: ProbePool
    slot: int
    ret: bool
    link_fd: int = -1  # closing it detaches the program (a BPF link)
    perf_fd: int = -1  # the kprobe/uprobe perf event under a perf-event link, if any


@dataclass
class _Registration:
    probe: AnyProbe
    attaches: list[_Attach] = field(default_factory=list)
    tracefs_event: str | None = None  # kept after removal: kprobe_profile is read by name
    tracefs_removed: bool = False
    final: bool = False


class LiveBackend:
    """All live probes of this process. Use the module-level functions of kuprobe.live.api."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pools: list[ProbePool] = []
        self._regs: dict[int, _Registration] = {}
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
        reg: _Registration,
        pool: ProbePool,
        *,
        flags: int,
        tgid: int,
        handler: SlotHandler | None,
        attach: Callable[[int, int], tuple[int, int]],
        uprobe_multi: bool = False,
    ) -> _Attach:
        """Take a slot, configure it, and attach the program with ``attach(prog_fd, slot)``
        (the slot is the link's cookie), which returns (link fd, perf event fd or -1)."""
        slot = pool.acquire(flags=flags, tgid=tgid)
        att = _Attach(pool, slot, bool(flags & KUPROBE_CFG_RET))
        reg.attaches.append(att)
        self.dispatcher.set_handler(pool, slot, handler)
        att.link_fd, att.perf_fd = attach(pool.prog_fd(uprobe_multi=uprobe_multi), slot)
        return att

    def _rollback(self, reg: _Registration) -> None:
        self._detach(reg)
        for att in reg.attaches:
            self.dispatcher.set_handler(att.pool, att.slot, None)
            att.pool.release(att.slot)
        reg.attaches.clear()

    def register_uprobe(self, up: Uprobe) -> None:
        from kuprobe.live.resolve import check_offset, resolve_uprobe

        if not isinstance(up, Uprobe):
            raise TypeError(f"register_uprobe() takes a Uprobe, not {type(up).__name__}")
        with self._lock:
            self._claim(up)
            pid = 0
            if up.pid is not None:
                pid = check_offset(up.pid, "pid")
                if pid == 0 or not os.path.exists(f"/proc/{pid}"):
                    raise ProbeError(errno.ESRCH, f"no process {up.pid}", probe=up)
            ref_ctr = check_offset(up.ref_ctr_offset, "ref_ctr_offset")
            target = resolve_uprobe(
                up.path, symbol_name=up.symbol_name, offset=up.offset, host_arch=host_arch()
            )
            self.require_root()
            self.require_pmu("uprobe")
            uc = up.consumer
            handler = uc.handler if uc else None
            ret_handler = uc.ret_handler if uc else None
            reg = _Registration(up)
            pool = self._pool_with(2 if ret_handler else 1)
            make_regs = regs_factory(target.arch)

            multi = pool.uprobe_multi()

            def open_uprobe(ret: bool) -> Callable[[int, int], tuple[int, int]]:
                if multi:  # closes without the perf layer's serialisation (see perf.py)
                    return lambda prog, slot: (
                        perf.open_uprobe_multi(
                            prog, target.path, target.offset,
                            retprobe=ret, pid=pid, ref_ctr_offset=ref_ctr, cookie=slot,
                        ),
                        -1,
                    )  # fmt: skip
                return lambda prog, slot: _perf_link(
                    perf.open_uprobe(
                        target.path, target.offset, retprobe=ret, pid=pid, ref_ctr_offset=ref_ctr
                    ),
                    prog,
                    slot,
                )

            try:
                entry_flags = (KUPROBE_CFG_STREAM | KUPROBE_CFG_REMOVABLE) if handler else 0
                entry = self._attach_slot(
                    reg,
                    pool,
                    flags=entry_flags,
                    tgid=pid,
                    handler=self._uprobe_handler(up, pool, reg, target.arch) if handler else None,
                    attach=open_uprobe(False),
                    uprobe_multi=multi,
                )
                if ret_handler:
                    self._attach_slot(
                        reg,
                        pool,
                        flags=KUPROBE_CFG_STREAM | KUPROBE_CFG_RET | KUPROBE_CFG_REMOVABLE,
                        tgid=pid,
                        handler=self._uretprobe_handler(up, make_regs),
                        attach=open_uprobe(True),
                        uprobe_multi=multi,
                    )
                del entry
            except OSError as e:
                self._rollback(reg)
                raise _attach_error(e, up, f"{target.path}:{target.offset:#x}") from e
            except BaseException:
                self._rollback(reg)
                raise
            up._inode = target.inode
            up._file_offset = target.offset
            up._owner = self
            self._regs[id(up)] = reg

    def _uprobe_handler(
        self,
        up: Uprobe,
        pool: ProbePool,
        reg: _Registration,
        arch: str,
    ) -> SlotHandler:
        uc = up.consumer
        assert uc is not None and uc.handler is not None
        handler, filt = uc.handler, uc.filter
        report = self._reporter(up)
        removed: set[int] = set()
        regs_cls, decoder = live_regs_parts(arch)
        new = object.__new__

        def on_hit(chunk: memoryview, off: int, ts: int, func_ip: int, task: Task) -> None:
            # The hottest path of the live side: regs_factory() inlined.
            if removed and task.pid in removed:
                return  # recorded before the kernel-side removal took effect
            try:
                if filt is not None and not filt(uc, task):
                    return
                regs = new(regs_cls)
                regs._raw = (decoder, chunk, off, ts)
                ret = handler(uc, regs)
            except Exception as e:
                report(e)
                return
            if ret and ret & UPROBE_HANDLER_REMOVE:
                # kernel/events/uprobes.c: handler_chain() -> unapply_uprobe(): no more calls
                # of this consumer in that process.
                removed.add(task.pid)
                for att in reg.attaches:
                    att.pool.mark_removed(att.slot, task.pid)

        return on_hit

    def _uretprobe_handler(
        self, up: Uprobe, make_regs: Callable[[memoryview, int, int], Any]
    ) -> SlotHandler:
        uc = up.consumer
        assert uc is not None and uc.ret_handler is not None
        ret_handler, filt = uc.ret_handler, uc.filter
        report = self._reporter(up)

        def on_ret(chunk: memoryview, off: int, ts: int, func_ip: int, task: Task) -> None:
            try:
                if filt is not None and not filt(uc, task):
                    return
                ret_handler(uc, func_ip, make_regs(chunk, off, ts))
            except Exception as e:
                report(e)

        return on_ret

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

    # --- kprobes -------------------------------------------------------------------

    def _check_kprobe_target(self, p: Kprobe | Kretprobe) -> tuple[str | None, int]:
        from kuprobe.live.resolve import check_offset, check_symbol_name

        if (p.symbol_name is None) == (p.addr is None):
            raise ProbeError(
                errno.EINVAL,
                "give a kprobe either symbol_name (+ offset) or addr, not "
                + ("both" if p.symbol_name is not None else "neither"),
                probe=p,
            )
        if p.symbol_name is not None:
            return check_symbol_name(p.symbol_name), check_offset(p.offset, "offset")
        if p.offset:
            raise ProbeError(errno.EINVAL, "offset goes with symbol_name, not addr", probe=p)
        return None, check_offset(p.addr, "addr")

    def register_kprobes(self, kps: Sequence[Kprobe]) -> None:
        with self._lock:
            self._prevalidate(kps, Kprobe)
            done: list[Kprobe] = []
            try:
                for kp in kps:
                    self._register_kprobe(kp)
                    done.append(kp)
            except BaseException:
                for kp in reversed(done):
                    self.unregister(kp)
                raise

    def _prevalidate(self, probes: Sequence[Kprobe | Kretprobe], kind: type) -> None:
        """Check every probe of a batch before arming any (all or nothing)."""
        if len({id(p) for p in probes}) != len(probes):
            raise ProbeError(errno.EINVAL, "the same probe object appears twice in the batch")
        for p in probes:
            if not isinstance(p, kind):
                raise TypeError(f"expected {kind.__name__}, not {type(p).__name__}")
            self._claim(p)
            self._check_kprobe_target(p)

    def _register_kprobe(self, kp: Kprobe) -> None:
        if not isinstance(kp, Kprobe):
            raise TypeError(f"register_kprobe() takes a Kprobe, not {type(kp).__name__}")
        self._claim(kp)
        sym, off = self._check_kprobe_target(kp)
        for name in ("post_handler", "fault_handler"):
            if getattr(kp, name) is not None:
                raise ProbeError(
                    errno.EOPNOTSUPP,
                    f"{name} cannot run on the live backend: the eBPF program runs at the "
                    "breakpoint, before the single-step, and cannot catch a handler's fault",
                    probe=kp,
                    hint="use kuprobe.model.Machine for post/fault handler semantics",
                )
        self.require_root()
        self.require_pmu("kprobe")
        reg = _Registration(kp)
        pool = self._pool_with(1)
        make_regs = regs_factory("x86_64")
        pre = kp.pre_handler
        handler: SlotHandler | None = None
        if pre is not None:
            report = self._reporter(kp)

            def handler(chunk: memoryview, off_: int, ts: int, ip: int, task: Task) -> None:
                try:
                    pre(kp, make_regs(chunk, off_, ts))
                except Exception as e:
                    report(e)

        try:
            self._attach_slot(
                reg,
                pool,
                flags=KUPROBE_CFG_KERNEL | (KUPROBE_CFG_STREAM if pre else 0),
                tgid=0,
                handler=handler,
                attach=lambda prog, slot: _perf_link(
                    perf.open_kprobe(sym, off, retprobe=False), prog, slot
                ),
            )
            if kp.flags & KPROBE_FLAG_DISABLED:  # registered disabled, as the kernel allows
                pool.set_off(reg.attaches[0].slot, True)
        except OSError as e:
            self._rollback(reg)
            raise _attach_error(e, kp, _kname(sym, off)) from e
        except BaseException:
            self._rollback(reg)
            raise
        kp._owner = self
        self._regs[id(kp)] = reg

    def register_kretprobes(self, rps: Sequence[Kretprobe]) -> None:
        with self._lock:
            self._prevalidate(rps, Kretprobe)
            done: list[Kretprobe] = []
            try:
                for rp in rps:
                    self._register_kretprobe(rp)
                    done.append(rp)
            except BaseException:
                for rp in reversed(done):
                    self.unregister(rp)
                raise

    def _register_kretprobe(self, rp: Kretprobe) -> None:
        if not isinstance(rp, Kretprobe):
            raise TypeError(f"register_kretprobe() takes a Kretprobe, not {type(rp).__name__}")
        self._claim(rp)
        sym, off = self._check_kprobe_target(rp)
        if not 0 <= rp.data_size <= KRETPROBE_MAX_DATA_SIZE:
            raise ProbeError(
                errno.E2BIG if rp.data_size > 0 else errno.EINVAL,
                f"data_size {rp.data_size} is outside 0..{KRETPROBE_MAX_DATA_SIZE}",
                probe=rp,
            )
        if rp.maxactive < 0:
            raise ProbeError(errno.EINVAL, f"maxactive {rp.maxactive} is negative", probe=rp)
        self.require_root()
        self.require_pmu("kprobe")
        reg = _Registration(rp)
        want_entry = rp.entry_handler is not None or rp.data_size > 0
        pool = self._pool_with(2 if want_entry else 1)
        entry_h, ret_h = self._kretprobe_handlers(rp)
        target = _kname(sym, off)
        try:
            if want_entry:
                self._attach_slot(
                    reg,
                    pool,
                    flags=KUPROBE_CFG_KERNEL | KUPROBE_CFG_STREAM,
                    tgid=0,
                    handler=entry_h,
                    attach=lambda prog, slot: _perf_link(
                        perf.open_kprobe(sym, off, retprobe=False), prog, slot
                    ),
                )
            open_ret: Callable[[], int]
            if rp.maxactive:
                self._remove_stale_events()
                self._event_seq += 1
                name = f"kuprobe_{os.getpid()}_{self._event_seq}"
                if sym is None:
                    raise ProbeError(
                        errno.EINVAL, "a kretprobe with maxactive needs symbol_name", probe=rp
                    )
                self._start_reaper()
                tp_id = perf.create_kretprobe_event(name, target, rp.maxactive)
                reg.tracefs_event = name
                open_ret = lambda: perf.open_tracepoint(tp_id)  # noqa: E731
            else:
                open_ret = lambda: perf.open_kprobe(sym, off, retprobe=True)  # noqa: E731
            self._attach_slot(
                reg,
                pool,
                flags=KUPROBE_CFG_KERNEL
                | KUPROBE_CFG_RET
                | (KUPROBE_CFG_STREAM if rp.handler or want_entry else 0),
                tgid=0,
                handler=ret_h,
                attach=lambda prog, slot: _perf_link(open_ret(), prog, slot),
            )
        except OSError as e:
            self._rollback(reg)
            raise _attach_error(e, rp, target) from e
        except BaseException:
            self._rollback(reg)
            raise
        rp._owner = self
        self._regs[id(rp)] = reg

    def _kretprobe_handlers(self, rp: Kretprobe) -> tuple[SlotHandler, SlotHandler | None]:
        """Entry and return handlers sharing one KretprobeInstance per call (per task, LIFO)."""
        make_regs = regs_factory("x86_64")
        in_flight: dict[int, list[KretprobeInstance | None]] = {}
        report = self._reporter(rp)
        entry_handler, handler = rp.entry_handler, rp.handler

        def on_entry(chunk: memoryview, off: int, ts: int, ip: int, task: Task) -> None:
            ri: KretprobeInstance | None = KretprobeInstance(rp, bytearray(rp.data_size), 0, task)
            if entry_handler is not None:
                try:
                    if entry_handler(ri, make_regs(chunk, off, ts)):  # type: ignore[arg-type]
                        ri = None  # kernel/kprobes.c: nonzero -> no return handler this call
                except Exception as e:
                    report(e)
                    ri = None
            in_flight.setdefault(task.tid, []).append(ri)

        def on_ret(chunk: memoryview, off: int, ts: int, ip: int, task: Task) -> None:
            stack = in_flight.get(task.tid)
            regs = make_regs(chunk, off, ts)
            if stack:
                ri = stack.pop()
                if ri is None:
                    return
            else:
                ri = KretprobeInstance(rp, bytearray(rp.data_size), 0, task)
            ri.ret_addr = instruction_pointer(regs)
            if handler is not None:
                try:
                    handler(ri, regs)
                except Exception as e:
                    report(e)

        return on_entry, (on_ret if handler is not None or entry_handler is not None else None)

    def _start_reaper(self) -> None:
        """A watcher that removes this process's tracefs events when it dies, even by
        SIGKILL (perf events go with their fds; tracefs events would stay)."""
        if self._reaper is None or self._reaper.poll() is not None:
            self._reaper = subprocess.Popen(
                [sys.executable, "-c", perf.REAPER, str(os.getpid())],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )

    def _remove_stale_events(self) -> None:
        if not self._stale_checked:
            self._stale_checked = True
            for name in perf.remove_stale_events():
                log.warning("removed stale tracefs event kuprobe/%s", name)

    # --- enable / disable ----------------------------------------------------------

    def set_enabled(self, kp: Kprobe, enabled: bool) -> None:
        """enable_kprobe()/disable_kprobe(): the slot's program counts and records or not.

        (PERF_EVENT_IOC_DISABLE does not stop a BPF program attached to a kprobe event.)
        """
        with self._lock:
            reg = self._regs.get(id(kp))
            if reg is None:
                raise ProbeError(errno.EINVAL, "this Kprobe is not registered", probe=kp)
            for att in reg.attaches:
                att.pool.set_off(att.slot, not enabled)
            if enabled:
                kp.flags &= ~KPROBE_FLAG_DISABLED
            else:
                kp.flags |= KPROBE_FLAG_DISABLED

    # --- unregistration ------------------------------------------------------------

    def _detach(self, reg: _Registration) -> None:
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
            _in_parallel(self._detach, todo)
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

    def _read_profile(self, regs: Sequence[_Registration]) -> dict[str, tuple[int, int]]:
        if any(r.tracefs_event for r in regs):
            return perf.kprobe_profile()
        return {}

    def _sync(self, reg: _Registration, profile: dict[str, tuple[int, int]] | None = None) -> None:
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


def _perf_link(perf_fd: int, prog_fd: int, slot: int) -> tuple[int, int]:
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
        where = _kname(p.symbol_name, p.offset) if p.symbol_name else f"{p.addr or 0:#x}"
        return f"{kind} {where}"
    return type(p).__name__


def _in_parallel(fn: Callable[[_Registration], None], regs: Sequence[_Registration]) -> None:
    """``fn`` on each, side by side (plain threads: this also runs from atexit, where
    concurrent.futures refuses new work)."""
    if len(regs) <= 1:
        for r in regs:
            fn(r)
        return
    errors: list[BaseException] = []

    def run(r: _Registration) -> None:
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


def _kname(sym: str | None, off: int) -> str:
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


def _attach_error(e: OSError, probe: object, where: str) -> ProbeError:
    if isinstance(e, ProbeError):
        return e
    code = e.errno or errno.EIO
    text = _ERRNO_TEXT.get(code, os.strerror(code))
    if code == ENOTSUPP:
        code = errno.EOPNOTSUPP
    return ProbeError(code, f"{where}: {text}", probe=probe)
