"""Live registration: the steps (a slot, its BPF link, rollback) every kind of probe shares.

A registered probe holds one or two slots of a compiled pool and one BPF link per slot
(kuprobe/live/state.py). Registration either completes or leaves nothing behind: a slot is
taken, configured and attached here, and undone (``_rollback``) when any step fails.
The kinds of probe live in kuprobe/live/uprobe.py and kuprobe/live/kprobe.py, unregistration
in kuprobe/live/teardown.py, counters in kuprobe/live/counters.py.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
from collections.abc import Callable, Sequence

from kuprobe.errors import ProbeError
from kuprobe.live.compiling import PendingPool
from kuprobe.live.counters import sync
from kuprobe.live.dispatch import SlotHandler
from kuprobe.live.events import KUPROBE_CFG_RET
from kuprobe.live.messages import describe
from kuprobe.live.perf_event import pmu_type
from kuprobe.live.perf_link import link_perf_event
from kuprobe.live.pool import ProbePool
from kuprobe.live.state import Attach, Registration
from kuprobe.live.teardown import TeardownOps
from kuprobe.probes import AnyProbe, inc_handler_errors, owner

log = logging.getLogger("kuprobe")


class RegisterOps(TeardownOps):
    """State and steps shared by every kind of live probe: registration's here, unregistration's
    in TeardownOps (kuprobe/live/teardown.py), the state in BackendState (kuprobe/live/state.py)."""

    def __init__(self) -> None:
        super().__init__()
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
        if pmu_type(name) is not None:
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

    def _claim(self, probe: AnyProbe) -> None:
        if owner(probe) is not None:
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
        func_id: int = 0,
    ) -> Attach:
        """Take a slot, configure it (and its ``captures``: kuprobe/live/capture.py), and
        attach the program with ``attach(prog_fd, slot)`` (the slot is the link's cookie),
        which returns (link fd, perf event fd or -1). ``func_id``: the slot's key in
        kuprobe_funcs (KUPROBE_CFG_FUNC, kuprobe/live/uprobe.py)."""
        slot = pool.acquire(flags=flags, tgid=tgid, func_id=func_id)
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

    def _reporter(self, probe: AnyProbe) -> Callable[[BaseException], None]:
        def report(e: BaseException) -> None:
            if inc_handler_errors(probe) == 1:
                log.error(
                    "handler of %s raised; counted in handler_errors, dispatch goes on",
                    describe(probe),
                    exc_info=e,
                )

        return report

    # --- counters ------------------------------------------------------------------

    def sync_counters(self, probe: AnyProbe) -> None:
        """Refresh the counters of a registered probe from the kernel's maps."""
        reg = self._regs.get(id(probe))
        if reg is not None and not reg.final:
            sync(reg)

    def registered(self) -> list[AnyProbe]:
        with self._lock:
            return [r.probe for r in self._regs.values()]


def perf_link(perf_fd: int, prog_fd: int, slot: int) -> tuple[int, int]:
    """The program on a kprobe/uprobe perf event through a link whose cookie is the slot."""
    return link_perf_event(perf_fd, prog_fd, slot), perf_fd
