"""Live uprobes and uretprobes (kernel/events/uprobes.c, kernel/trace/trace_uprobe.c):
(inode, file offset) from the ELF, one slot per entry and return, consumers' handlers and
filters, UPROBE_HANDLER_REMOVE per process."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kuprobe.errors import KuprobeTypeError, ProbeError
from kuprobe.live import perf_event, uprobe_multi
from kuprobe.live.capture import capture_cfg, captured_for
from kuprobe.live.dispatch import SlotHandler
from kuprobe.live.events import (
    KUPROBE_CFG_CAPTURE,
    KUPROBE_CFG_FUNC,
    KUPROBE_CFG_NO_FUNC_IP,
    KUPROBE_CFG_REMOVABLE,
    KUPROBE_CFG_RET,
    KUPROBE_CFG_STACK,
    KUPROBE_CFG_STREAM,
    live_host,
    regs_factory,
)
from kuprobe.live.messages import attach_error, describe
from kuprobe.live.pool import ProbePool
from kuprobe.live.register import RegisterOps, perf_link
from kuprobe.live.state import Registration
from kuprobe.probes import (
    UPROBE_HANDLER_REMOVE,
    Uprobe,
    UprobeConsumer,
    check_captures,
    check_handlers,
    set_identity,
    set_owner,
)
from kuprobe.task import Task

log = logging.getLogger("kuprobe")
# For tests only: "1" makes the uretprobes registered afterwards take the path of kernels whose
# bpf_get_func_ip() gives 0 for uprobes (before Linux 6.6), on any kernel: ``func`` then comes
# from the entry slot's note (KUPROBE_CFG_FUNC) or from the process's mappings.
NO_FUNC_IP_ENV = "KUPROBE_TEST_NO_FUNC_IP"


class UprobeOps(RegisterOps):
    """register_uprobe() and the dispatch of uprobe and uretprobe events."""

    def register_uprobe(self, up: Uprobe) -> None:
        from kuprobe.resolve import resolve_uprobe
        from kuprobe.validate import check_offset

        if not isinstance(up, Uprobe):
            raise KuprobeTypeError(f"register_uprobe() takes a Uprobe, not {type(up).__name__}")
        self.prepare_pool()  # the compile overlaps the resolving below
        # Links of earlier unregisters close first: a uprobe at a place whose old uprobe is
        # still being removed, with another ref_ctr_offset (a USDT site probed plainly, or the
        # other way round), gets EINVAL from alloc_uprobe() until that uprobe is gone.
        self.closer.flush()
        with self._lock:
            self._claim(up)
            pid = 0
            if up.pid is not None:
                pid = check_offset(up.pid, "pid")
                if pid == 0 or not os.path.exists(f"/proc/{pid}"):
                    raise ProbeError(errno.ESRCH, f"no process {up.pid}", probe=up)
            ref_ctr = check_offset(up.ref_ctr_offset, "ref_ctr_offset")
            host = live_host()
            uc = up.consumer
            if uc is not None and not isinstance(uc, UprobeConsumer):
                raise ProbeError(
                    errno.EINVAL,
                    f"consumer must be a UprobeConsumer, not {type(uc).__name__}",
                    probe=up,
                )
            if uc is not None:
                check_handlers(up, handler=uc.handler, ret_handler=uc.ret_handler, filter=uc.filter)
            target = resolve_uprobe(
                up.path,
                symbol_name=up.symbol_name,
                offset=up.offset,
                runs=host.runs,
                where=f"this {host.name} kernel",
                unsafe=bool(up.unsafe),
                pid=pid or None,
            )
            self.require_root()
            self.require_pmu("uprobe")
            uc = up.consumer
            handler = uc.handler if uc else None
            ret_handler = uc.ret_handler if uc else None
            captures = check_captures(up.capture, up)
            cfgs = [capture_cfg(c, target.arch, kernel=False) for c in captures]
            cap_flag = (KUPROBE_CFG_CAPTURE if cfgs else 0) | (KUPROBE_CFG_STACK if up.stack else 0)
            reg = Registration(up)
            pool = self._pool_with(2 if ret_handler else 1)
            make_regs = regs_factory(target.arch)

            multi = pool.uprobe_multi()

            def open_uprobe(ret: bool) -> Callable[[int, int], tuple[int, int]]:
                if multi:  # closes without the perf layer's serialisation (see uprobe_multi.py)
                    return lambda prog, slot: (
                        uprobe_multi.open_uprobe_multi(
                            prog, target.path, target.offset,
                            retprobe=ret, pid=pid, ref_ctr_offset=ref_ctr, cookie=slot,
                        ),
                        -1,
                    )  # fmt: skip
                return lambda prog, slot: perf_link(
                    perf_event.open_uprobe(
                        target.path, target.offset, retprobe=ret, pid=pid, ref_ctr_offset=ref_ctr
                    ),
                    prog,
                    slot,
                )

            # A uretprobe's func (kernel/events/uprobes.c: ri->func): where bpf_get_func_ip()
            # gives 0 (before 6.6), the entry slot notes it per process and the return slot
            # reads it back, so a process gone before its events are handled still has it.
            func_flag, func_id = 0, 0
            if ret_handler:
                func_flag, func_id = KUPROBE_CFG_FUNC, pool.new_func_id()
                if os.environ.get(NO_FUNC_IP_ENV) == "1":
                    func_flag |= KUPROBE_CFG_NO_FUNC_IP

            with self.signals:  # a signal now would leave a link nobody owns
                try:
                    entry_flags = (
                        (KUPROBE_CFG_STREAM | KUPROBE_CFG_REMOVABLE | cap_flag) if handler else 0
                    ) | func_flag
                    entry = self._attach_slot(
                        reg,
                        pool,
                        flags=entry_flags,
                        tgid=pid,
                        handler=self._uprobe_handler(up, pool, reg, target.arch)
                        if handler
                        else None,
                        attach=open_uprobe(False),
                        uprobe_multi=multi,
                        captures=cfgs if handler else (),
                        func_id=func_id,
                    )
                    if ret_handler:
                        self._attach_slot(
                            reg,
                            pool,
                            flags=KUPROBE_CFG_STREAM
                            | KUPROBE_CFG_RET
                            | KUPROBE_CFG_REMOVABLE
                            | cap_flag
                            | func_flag,
                            tgid=pid,
                            handler=self._uretprobe_handler(up, make_regs, pool),
                            attach=open_uprobe(True),
                            uprobe_multi=multi,
                            captures=cfgs,
                            func_id=func_id,
                        )
                    del entry
                except OSError as e:
                    self._rollback(reg)
                    raise attach_error(e, up, f"{target.path}:{target.offset:#x}") from e
                except BaseException:
                    self._rollback(reg)
                    raise
                set_identity(up, target.inode, target.offset)
                set_owner(up, self)
                self._regs[id(up)] = reg

    def _uprobe_handler(
        self,
        up: Uprobe,
        pool: ProbePool,
        reg: Registration,
        arch: str,
    ) -> SlotHandler:
        uc = up.consumer
        assert uc is not None and uc.handler is not None
        handler, filt = captured_for(up, uc.handler, pool.stack), uc.filter
        report = self._reporter(up)
        removed: set[int] = set()
        warned: list[int] = []
        make_regs = regs_factory(arch)

        def on_hit(chunk: memoryview, off: int, ts: int, func_ip: int, task: Task) -> None:
            # The hottest path of the live side.
            if removed and task.tgid in removed:
                return  # recorded before the kernel-side removal took effect
            try:
                if filt is not None and not filt(uc, task):
                    return
                ret = handler(uc, make_regs(chunk, off, ts))
            except BaseException as e:  # SystemExit too: the dispatcher never dies
                report(e)
                return
            if ret and ret & UPROBE_HANDLER_REMOVE:
                # kernel/events/uprobes.c: handler_chain() -> unapply_uprobe(): no more calls
                # of this consumer in that process.
                removed.add(task.tgid)
                try:
                    for att in reg.attaches:
                        att.pool.mark_removed(att.slot, task.tgid)
                except (OSError, KeyError) as e:  # the map is full: filtered here instead
                    if not warned:
                        warned.append(1)
                        log.warning(
                            "%s: the kernel's removal map is full (%s); process %d is "
                            "filtered out by kuprobe instead",
                            describe(up), e, task.tgid,
                        )  # fmt: skip

        return on_hit

    def _uretprobe_handler(
        self, up: Uprobe, make_regs: Callable[[memoryview, int, int], Any], pool: ProbePool
    ) -> SlotHandler:
        uc = up.consumer
        assert uc is not None and uc.ret_handler is not None
        ret_handler, filt = captured_for(up, uc.ret_handler, pool.stack), uc.filter
        report = self._reporter(up)

        # tgid -> the function's address there, for the events the kernel left without it
        funcs: dict[int, int] = {}

        def on_ret(chunk: memoryview, off: int, ts: int, func_ip: int, task: Task) -> None:
            try:
                if filt is not None and not filt(uc, task):
                    return
                if not func_ip:
                    func_ip = funcs.get(task.tgid, 0)
                    if not func_ip:  # a process gone (0) is asked again: a new one may reuse its id
                        func_ip = func_vaddr(task.tgid, up.inode, up.file_offset)
                        if func_ip:
                            funcs[task.tgid] = func_ip
                ret_handler(uc, func_ip, make_regs(chunk, off, ts))
            except BaseException as e:  # SystemExit too: the dispatcher never dies
                report(e)

        return on_ret


def func_vaddr(tgid: int, inode: tuple[int, int] | None, file_offset: int | None) -> int:
    """Where (inode, file_offset) is mapped in process ``tgid``: a uretprobe's ``func``, the
    probed function's address (kernel/events/uprobes.c: ``ri->func``, the bp_vaddr of its
    entry). A BPF program reads it with bpf_get_func_ip() only since Linux 6.6 ("bpf: Add
    bpf_get_func_ip support for uprobe link"); before, the probe's entry slot notes it
    (KUPROBE_CFG_FUNC, kuprobe/bpf_programs/probe_pool.bpf.c). This is the last resort for
    an event left without it (a call entered before the probe was registered, a process
    evicted from the note's LRU map): the process's mappings, 0 if it has gone."""
    if inode is None or file_offset is None:
        return 0
    try:
        lines = Path(f"/proc/{tgid}/maps").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 5 or int(parts[4]) != inode[1] or "x" not in parts[1]:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        pgoff = int(parts[2], 16)
        if pgoff <= file_offset < pgoff + (end - start):
            return start + file_offset - pgoff
    return 0
