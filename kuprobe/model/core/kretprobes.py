"""kretprobes: an instance pool, entry_handler, the return-address hijack and the trampoline.

Mirrors kernel/kprobes.c (register_kretprobe, pre_handler_kretprobe, recycle_rp_inst) and
the trampoline of arch/x86/kernel/kprobes/core.c and arch/arm64/kernel/probes/kprobes.c
(trampoline_handler: the instances of this frame, newest first, handlers called with the
return registers, then the real return address).

Two trampoline designs, chosen per Machine (``kretprobe_trampoline=``):

- "direct" (today's, and the patch "Avoid using kprobe in the arm64 kretprobe trampoline"):
  the trampoline saves the registers and calls the handler itself, with a dummy kprobe
  current (kprobe_busy_begin());
- "kprobe" (the design before it): a kprobe on the trampoline, whose pre_handler
  (trampoline_probe_handler) runs the kretprobe handlers inside that kprobe's debug exception
  and returns 1. On an arch whose debug exceptions do not nest, a kprobe hit in such a handler
  cannot be stepped (KprobeTable._reenter).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from kuprobe.errors import KuprobeValueError, ProbeError
from kuprobe.model.core.common import MachineLike, ModelError, call_handler
from kuprobe.model.core.kprobes import KprobeTable
from kuprobe.probes import (
    Kprobe,
    Kretprobe,
    KretprobeInstance,
    check_kretprobe_fields,
    inc_hits,
    inc_nmissed,
    owner,
    set_owner,
)
from kuprobe.regs import PtRegs

# kernel/kprobes.c: register_kretprobe(): with CONFIG_PREEMPTION (Debian's kernels) the
# default pool is max(10, 2 * num_possible_cpus()); the model has this host's two CPUs.
NUM_POSSIBLE_CPUS = 2
DEFAULT_MAXACTIVE = max(10, 2 * NUM_POSSIBLE_CPUS)


@dataclass(eq=False)
class _InFlight:
    ri: KretprobeInstance
    fp: int  # ri->fp: the stack slot that held the return address
    rp: Kretprobe | None  # None once the kretprobe was unregistered (ri->rp = NULL)


class _KretprobeEntry:
    """The kprobe a kretprobe registers at the function entry (pre_handler_kretprobe)."""

    def __init__(self, owner: KretprobeCore, rp: Kretprobe, maxactive: int) -> None:
        self.owner = owner
        self.rp = rp
        self.free = [KretprobeInstance(rp, bytearray(rp.data_size)) for _ in range(maxactive)]
        self.kp = Kprobe(symbol_name=rp.symbol_name, offset=rp.offset, addr=rp.addr)

    def missed(self) -> None:
        inc_nmissed(self.rp)

    def pre_handler(self, regs: PtRegs) -> int:
        m = self.owner.m
        rp = self.rp
        if not self.free:  # no instance: the call goes unprobed
            inc_nmissed(rp)
            m.record("kretprobe", self.owner.table.addr_of[self.kp], detail="pool empty: miss",
                     probe=rp)  # fmt: skip
            return 0
        ri = self.free.pop()
        ri.task = m.task
        if rp.entry_handler is not None and call_handler(m, rp, rp.entry_handler, ri, regs):
            self.free.append(ri)  # nonzero: no return handler for this call
            return 0
        ri.ret_addr, fp = m.hooks.arch_prepare_kretprobe(m, regs, m.hooks.KRETPROBE_TRAMPOLINE)
        self.owner.inflight.append(_InFlight(ri, fp, rp))
        return 0


TRAMPOLINE_DESIGNS = ("direct", "kprobe")


class _TrampolineKprobe:
    """The kprobe on the trampoline of the "kprobe" design (arch_init_kprobes() registered
    it with trampoline_probe_handler as its pre_handler)."""

    def __init__(self, owner: KretprobeCore) -> None:
        self.owner = owner
        self.kp = Kprobe(addr=owner.m.hooks.KRETPROBE_TRAMPOLINE)

    def missed(self) -> None:
        """A hit of the trampoline while a kprobe runs: nothing to count (no user probe)."""

    def pre_handler(self, regs: PtRegs) -> int:
        kcb = self.owner.table.kcb
        kcb.in_trampoline_kprobe = True
        try:
            self.owner.run_instances(regs)
        finally:
            kcb.in_trampoline_kprobe = False
        return 1  # "return 1 so that post handlers not called": resume at the return address


class KretprobeCore:
    """The kretprobes of one kernel Machine and its task's instance list."""

    def __init__(self, m: MachineLike, table: KprobeTable, design: str = "direct") -> None:
        if design not in TRAMPOLINE_DESIGNS:
            raise KuprobeValueError(
                f"kretprobe_trampoline must be one of {', '.join(TRAMPOLINE_DESIGNS)}, "
                f"not {design!r}"
            )
        self.m = m
        self.table = table
        self.design = design
        self.entries: dict[Kretprobe, _KretprobeEntry] = {}
        self.inflight: list[_InFlight] = []  # newest last

    def install_trampoline(self) -> None:
        """The trampoline's code: the arch's trap into trampoline_handler(), or (the "kprobe"
        design) a nop with a kprobe on it."""
        h = self.m.hooks
        if self.design == "direct":
            self.m.write(h.KRETPROBE_TRAMPOLINE, h.KRETPROBE_TRAMPOLINE_INSN)
            return
        self.m.write(h.KRETPROBE_TRAMPOLINE, h.NOP_INSN)
        tramp = _TrampolineKprobe(self)
        self.table.register(tramp.kp, internal=tramp, at=h.KRETPROBE_TRAMPOLINE)

    def register(self, rp: Kretprobe) -> None:
        if owner(rp) is not None:
            raise ProbeError(errno.EINVAL, "this kretprobe is already registered", probe=rp)
        check_kretprobe_fields(rp)
        maxactive = rp.maxactive if rp.maxactive > 0 else DEFAULT_MAXACTIVE
        entry = _KretprobeEntry(self, rp, maxactive)
        self.table.register(entry.kp, internal=entry)
        self.entries[rp] = entry
        set_owner(rp, self.m)

    def unregister(self, rp: Kretprobe) -> None:
        entry = self.entries.pop(rp, None)
        if entry is None:
            raise ProbeError(errno.EINVAL, "this kretprobe is not registered here", probe=rp)
        self.table.unregister(entry.kp)
        for f in self.inflight:  # instances in flight still return through the trampoline
            if f.rp is rp:
                f.rp = None
        set_owner(rp, None)

    def trampoline_handler(self, regs: PtRegs) -> None:
        """trampoline_handler() of the "direct" design: with a dummy kprobe current."""
        saved = self.table.busy_begin()
        try:
            self.run_instances(regs)
        finally:
            self.table.busy_end(saved)

    def run_instances(self, regs: PtRegs) -> None:
        """Run this frame's instances, newest first, then return for real."""
        m = self.m
        trampoline = m.hooks.KRETPROBE_TRAMPOLINE
        setattr(regs, m.hooks.ip_field(), trampoline)
        frame = m.hooks.kretprobe_frame(regs)
        mine = [f for f in reversed(self.inflight) if f.fp == frame]
        if not mine:
            # __kretprobe_trampoline_handler(): "kretprobe: Return address not found, not
            # execute handler. Maybe there is a bug in the kernel." and BUG_ON(1) (the seed's
            # trampoline_handler(): kretprobe_assert() is a BUG() too)
            raise ModelError(
                f"kernel oops: the kretprobe trampoline reached with no instance for {frame:#x}"
            )
        # the oldest instance of this frame holds the real return address
        correct = next((f.ri.ret_addr for f in mine if f.ri.ret_addr != trampoline), trampoline)
        if m.semantics.kretprobe_handler_ip == "return_address":
            # __kretprobe_trampoline_handler() (v5.16 on): instruction_pointer_set(regs,
            # correct_ret_addr) before the handlers run
            setattr(regs, m.hooks.ip_field(), correct)
        for f in mine:
            self.inflight.remove(f)
            f.ri.ret_addr = correct
            rp = f.rp
            if rp is not None:
                inc_hits(rp)
                m.record("kretprobe", frame, probe=rp, detail=f"return to {correct:#x}")
                if rp.handler is not None:
                    call_handler(m, rp, rp.handler, f.ri, regs)
                entry = self.entries.get(rp)
                if entry is not None:
                    entry.free.append(f.ri)  # recycle_rp_inst()
        setattr(regs, m.hooks.ip_field(), correct)
