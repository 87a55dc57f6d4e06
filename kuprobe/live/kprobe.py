"""Live kprobes and kretprobes, as perf events of the kprobe PMU.

They follow kernel/kprobes.c and kernel/trace/trace_kprobe.c: perf events of the kprobe PMU, a
tracefs event only for a kretprobe's own maxactive, entry and return handlers sharing one
KretprobeInstance per call."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence

from kuprobe.backend import register_all_or_none
from kuprobe.errors import KuprobeTypeError, ProbeError
from kuprobe.live import perf_event, tracefs
from kuprobe.live.capture import capture_cfg, captured_for
from kuprobe.live.dispatch import SlotHandler
from kuprobe.live.events import (
    KUPROBE_CFG_CAPTURE,
    KUPROBE_CFG_KERNEL,
    KUPROBE_CFG_RET,
    KUPROBE_CFG_STACK,
    KUPROBE_CFG_STREAM,
    live_host,
    regs_factory,
)
from kuprobe.live.messages import attach_error, kname
from kuprobe.live.pool import ProbePool
from kuprobe.live.register import RegisterOps, perf_link
from kuprobe.live.state import Registration
from kuprobe.probes import (
    KPROBE_FLAG_DISABLED,
    Kprobe,
    Kretprobe,
    KretprobeInstance,
    check_captures,
    check_handlers,
    check_kretprobe_fields,
    set_owner,
)
from kuprobe.regs import instruction_pointer
from kuprobe.task import Task
from kuprobe.validate import check_kprobe_target

log = logging.getLogger("kuprobe")


class KprobeOps(RegisterOps):
    """register_kprobe(s)/register_kretprobe(s), enable/disable, and their dispatch."""

    # --- kprobes -------------------------------------------------------------------

    def register_kprobes(self, kps: Sequence[Kprobe]) -> None:
        with self._lock:
            self._prevalidate(kps, Kprobe)
            register_all_or_none(kps, self._register_kprobe, self.unregister)

    def _prevalidate(self, probes: Sequence[Kprobe | Kretprobe], kind: type) -> None:
        """Check every probe of a batch before arming any (all or nothing)."""
        if len({id(p) for p in probes}) != len(probes):
            raise ProbeError(errno.EINVAL, "the same probe object appears twice in the batch")
        for p in probes:
            if not isinstance(p, kind):
                raise KuprobeTypeError(f"expected {kind.__name__}, not {type(p).__name__}")
            self._claim(p)
            if isinstance(p, Kprobe):
                check_handlers(p, pre_handler=p.pre_handler, post_handler=p.post_handler)
            else:
                check_handlers(p, handler=p.handler, entry_handler=p.entry_handler)
            check_kprobe_target(p)

    def _register_kprobe(self, kp: Kprobe) -> None:
        if not isinstance(kp, Kprobe):
            raise KuprobeTypeError(f"register_kprobe() takes a Kprobe, not {type(kp).__name__}")
        self._claim(kp)
        sym, off = check_kprobe_target(kp)
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
        reg = Registration(kp)
        pool = self._pool_with(1)
        make_regs = regs_factory(live_host().name)
        pre = kp.pre_handler
        captures = check_captures(kp.capture, kp)
        cfgs = [capture_cfg(c, live_host().name, kernel=True) for c in captures]
        if pre is not None:
            pre = captured_for(kp, pre, pool.stack)
        extra = (KUPROBE_CFG_CAPTURE if cfgs else 0) | (KUPROBE_CFG_STACK if kp.stack else 0)
        handler: SlotHandler | None = None
        if pre is not None:
            report = self._reporter(kp)

            def handler(chunk: memoryview, off_: int, ts: int, ip: int, task: Task) -> None:
                try:
                    pre(kp, make_regs(chunk, off_, ts))
                except BaseException as e:
                    report(e)

        with self.signals:  # a signal now would leave a link nobody owns
            try:
                self._attach_slot(
                    reg,
                    pool,
                    flags=KUPROBE_CFG_KERNEL | (KUPROBE_CFG_STREAM | extra if pre else 0),
                    tgid=0,
                    handler=handler,
                    captures=cfgs if pre else (),
                    attach=lambda prog, slot: perf_link(
                        perf_event.open_kprobe(sym, off, retprobe=False), prog, slot
                    ),
                )
                if kp.flags & KPROBE_FLAG_DISABLED:  # registered disabled, as the kernel allows
                    pool.set_off(reg.attaches[0].slot, True)
            except OSError as e:
                self._rollback(reg)
                raise attach_error(e, kp, kname(sym, off)) from e
            except BaseException:
                self._rollback(reg)
                raise
            set_owner(kp, self)
            self._regs[id(kp)] = reg

    def register_kretprobes(self, rps: Sequence[Kretprobe]) -> None:
        with self._lock:
            self._prevalidate(rps, Kretprobe)
            register_all_or_none(rps, self._register_kretprobe, self.unregister)

    def _register_kretprobe(self, rp: Kretprobe) -> None:
        if not isinstance(rp, Kretprobe):
            raise KuprobeTypeError(
                f"register_kretprobe() takes a Kretprobe, not {type(rp).__name__}"
            )
        self._claim(rp)
        sym, off = check_kprobe_target(rp)
        check_kretprobe_fields(rp)
        self.require_root()
        self.require_pmu("kprobe")
        reg = Registration(rp)
        want_entry = rp.entry_handler is not None or rp.data_size > 0
        pool = self._pool_with(2 if want_entry else 1)
        captures = check_captures(rp.capture, rp)  # read at the return
        cfgs = [capture_cfg(c, live_host().name, kernel=True) for c in captures]
        entry_h, ret_h = self._kretprobe_handlers(rp, pool)
        target = kname(sym, off)
        with self.signals:  # a signal now would leave a link nobody owns
            try:
                if want_entry:
                    self._attach_slot(
                        reg,
                        pool,
                        flags=KUPROBE_CFG_KERNEL | KUPROBE_CFG_STREAM,
                        tgid=0,
                        handler=entry_h,
                        attach=lambda prog, slot: perf_link(
                            perf_event.open_kprobe(sym, off, retprobe=False), prog, slot
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
                    tp_id = tracefs.create_kretprobe_event(name, target, rp.maxactive)
                    reg.tracefs_event = name
                    open_ret = lambda: perf_event.open_tracepoint(tp_id)  # noqa: E731
                else:
                    open_ret = lambda: perf_event.open_kprobe(sym, off, retprobe=True)  # noqa: E731
                self._attach_slot(
                    reg,
                    pool,
                    flags=KUPROBE_CFG_KERNEL
                    | KUPROBE_CFG_RET
                    | (KUPROBE_CFG_STREAM if rp.handler or want_entry else 0)
                    | (KUPROBE_CFG_CAPTURE if cfgs and rp.handler else 0)
                    | (KUPROBE_CFG_STACK if rp.stack and rp.handler else 0),
                    tgid=0,
                    handler=ret_h,
                    captures=cfgs if rp.handler else (),
                    attach=lambda prog, slot: perf_link(open_ret(), prog, slot),
                )
            except OSError as e:
                self._rollback(reg)
                raise attach_error(e, rp, target) from e
            except BaseException:
                self._rollback(reg)
                raise
            set_owner(rp, self)
            self._regs[id(rp)] = reg

    def _kretprobe_handlers(
        self, rp: Kretprobe, pool: ProbePool
    ) -> tuple[SlotHandler, SlotHandler | None]:
        """Entry and return handlers sharing one KretprobeInstance per call (per task, LIFO)."""
        make_regs = regs_factory(live_host().name)
        in_flight: dict[int, list[KretprobeInstance | None]] = {}
        report = self._reporter(rp)
        entry_handler, handler = rp.entry_handler, rp.handler
        if handler is not None:
            handler = captured_for(rp, handler, pool.stack)

        def on_entry(chunk: memoryview, off: int, ts: int, ip: int, task: Task) -> None:
            ri: KretprobeInstance | None = KretprobeInstance(rp, bytearray(rp.data_size), 0, task)
            if entry_handler is not None:
                try:
                    if entry_handler(ri, make_regs(chunk, off, ts)):  # type: ignore[arg-type]
                        ri = None  # kernel/kprobes.c: nonzero -> no return handler this call
                except BaseException as e:
                    report(e)
                    ri = None
            in_flight.setdefault(task.pid, []).append(ri)

        def on_ret(chunk: memoryview, off: int, ts: int, ip: int, task: Task) -> None:
            stack = in_flight.get(task.pid)
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
                except BaseException as e:
                    report(e)

        return on_entry, (on_ret if handler is not None or entry_handler is not None else None)

    def _start_reaper(self) -> None:
        """A watcher that removes this process's tracefs events when it dies, even by
        SIGKILL (perf events go with their fds; tracefs events would stay)."""
        if self._reaper is None or self._reaper.poll() is not None:
            self._reaper = subprocess.Popen(
                [sys.executable, "-c", tracefs.REAPER, str(os.getpid())],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )

    def _remove_stale_events(self) -> None:
        if not self._stale_checked:
            self._stale_checked = True
            for name in tracefs.remove_stale_events():
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
