"""kprobes: registration, aggregate probes, kprobe_ctlblk and the trap flow.

Mirrors kernel/kprobes.c (register_kprobe, register_aggr_kprobe, aggr_pre_handler,
aggr_post_handler, kprobes_inc_nmissed_count, enable/disable_kprobe) and the arch-independent
part of the arch trap flows (arch/x86/kernel/kprobes/core.c: kprobe_int3_handler,
reenter_kprobe, kprobe_debug_handler, kprobe_fault_handler; arch/arm64/kernel/probes/
kprobes.c: kprobe_handler, setup_singlestep with arch_simulate_insn, post_kprobe_handler),
with the fault rules of the patch "Kprobes- robust fault handling for i386". Everything
arch-specific goes through the arch hooks.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kuprobe.errors import ProbeError
from kuprobe.model.arch.base import ArchSpecificInsn
from kuprobe.model.core.common import HandlerAbandoned, MachineLike, ModelError, call_handler
from kuprobe.probes import KPROBE_FLAG_DISABLED, Kprobe, inc_hits, inc_nmissed, owner, set_owner
from kuprobe.regs import PtRegs
from kuprobe.validate import check_kprobe_target

if TYPE_CHECKING:
    from collections.abc import Callable

# include/linux/kprobes.h: kprobe_ctlblk.kprobe_status (HIT_FAULT: the i386 fault-handling patch)
KPROBE_HIT_ACTIVE = 0x01
KPROBE_HIT_SS = 0x02
KPROBE_REENTER = 0x04
KPROBE_HIT_SSDONE = 0x08
KPROBE_HIT_FAULT = 0x10
STATUS_NAMES = {
    0: "NONE",
    KPROBE_HIT_ACTIVE: "HIT_ACTIVE",
    KPROBE_HIT_SS: "HIT_SS",
    KPROBE_REENTER: "REENTER",
    KPROBE_HIT_SSDONE: "HIT_SSDONE",
    KPROBE_HIT_FAULT: "HIT_FAULT",
}
INSN_SLOT_SIZE = 16  # kernel/kprobes.c: one slot is MAX_INSN_SIZE bytes
SLOTS_PER_PAGE = 0x1000 // INSN_SLOT_SIZE
RELOCATED_INSN_PAGES_BELOW = 0x1000000  # the model's: 16 MiB below an ET_DYN's load address


@dataclass(eq=False)
class ProbePoint:
    """The kernel's kprobe at one address: a single probe or an aggregate (its ``list``)."""

    addr: int
    ainsn: ArchSpecificInsn
    slot: int
    probes: list[Kprobe] = field(default_factory=list)
    armed: bool = False

    @property
    def is_aggr(self) -> bool:
        return len(self.probes) > 1

    def enabled(self) -> list[Kprobe]:
        return [p for p in self.probes if not p.flags & KPROBE_FLAG_DISABLED]


@dataclass
class PrevKprobe:
    """``struct prev_kprobe``: what save_previous_kprobe() copies out of the kcb for a reentry.
    The same fields as KprobeCtlblk's first ones, kept apart as the kernel keeps its two
    structs (restore_previous_kprobe() copies them back)."""

    kp: ProbePoint | None = None
    status: int = 0
    old_flags: int = 0
    saved_flags: int = 0


@dataclass
class KprobeCtlblk:
    """``struct kprobe_ctlblk`` plus ``current_kprobe`` (one CPU)."""

    current: ProbePoint | None = None
    status: int = 0
    old_flags: int = 0
    saved_flags: int = 0
    prev: PrevKprobe = field(default_factory=PrevKprobe)
    # the i386 fault-handling patch: the regs of the handler in flight, and which child's
    # handler runs
    handler_regs: PtRegs | None = None
    instance: Kprobe | None = None
    # a kretprobe handler runs inside the trampoline kprobe's debug exception (the design
    # before "Avoid using kprobe in the arm64 kretprobe trampoline")
    in_trampoline_kprobe: bool = False


class KprobeTable:
    """The kprobes of one kernel Machine (the kernel's kprobe_table and its one CPU)."""

    def __init__(self, m: MachineLike) -> None:
        self.m = m
        self.points: dict[int, ProbePoint] = {}
        self.addr_of: dict[Kprobe, int] = {}
        # kprobes the model registers for itself (a kretprobe's entry probe) -> their owner,
        # which has pre_handler(regs) and missed()
        self.internal: dict[Kprobe, Any] = {}
        self.kcb = KprobeCtlblk()
        self._free_slots: list[int] = []
        self._slot_pages = 0
        self.busy = ProbePoint(addr=0, ainsn=ArchSpecificInsn(b"", 0), slot=0)

    # --- registration (kernel/kprobes.c) -------------------------------------------------

    def resolve(self, p: Any) -> tuple[int, int]:
        """_kprobe_addr() + check_kprobe_address_safe() + can_probe(): the checked address,
        and the start of its function."""
        m = self.m
        symbol_name, off = check_kprobe_target(p)
        if symbol_name is not None:
            addr = m.load_bias + int(m.image.symbol(symbol_name).value) + off
        else:
            addr = off
        if not self.is_kernel_text(addr):
            raise ProbeError(
                errno.EINVAL,
                f"{addr:#x} is not kernel text",
                probe=p,
                hint="kprobes need a Machine loaded with space='kernel' and an address in "
                "an executable segment",
            )
        func = m.image.symbol_at(addr - m.load_bias)
        if func is None:
            raise ProbeError(errno.EILSEQ, f"{addr:#x} is in no known function", probe=p)
        start = m.load_bias + func.value
        # can_probe() decodes from the symbol's start through recover_probed_instruction():
        # the bytes as they were before any kprobe put its breakpoint there
        code = self.recover_probed_text(start, max(func.size, addr - start + 1))
        if not m.hooks.can_probe(code, addr - start):
            raise ProbeError(
                m.hooks.BOUNDARY_ERRNO,
                f"{func.name}+{addr - start:#x} is not an instruction boundary",
                probe=p,
                hint="use an offset where an instruction starts (objdump -d)",
            )
        return addr, start

    def recover_probed_text(self, start: int, size: int) -> bytes:
        """``size`` bytes of text at ``start`` as they were before any kprobe was armed.

        arch/x86/kernel/kprobes/core.c: recover_probed_instruction() -> __recover_probed_insn()
        puts back ``kp->opcode`` (the byte the int3 replaced) wherever get_kprobe() finds a
        kprobe; can_probe() and __copy_instruction() decode only recovered bytes, so the
        kprobes already registered in a function never change what the next one may do.
        """
        data = bytearray(self.m.read(start, size))
        n = len(self.m.hooks.BREAKPOINT_INSN)
        end = start + size
        for addr, point in self.points.items():
            if not point.armed or addr + n <= start or addr >= end:
                continue
            orig = point.ainsn.insn[:n]
            lo, hi = max(addr, start), min(addr + n, end)
            data[lo - start : hi - start] = orig[lo - addr : hi - addr]
        return bytes(data)

    def is_kernel_text(self, addr: int) -> bool:
        addr -= self.m.load_bias
        return any(
            s.executable and s.vaddr <= addr < s.vaddr + s.filesz for s in self.m.image.segments
        )

    def register(self, p: Kprobe, internal: Any = None, at: int | None = None) -> ProbePoint:
        """register_kprobe(); ``at``: a kprobe of the model's own code (the kretprobe
        trampoline), placed there without the checks a user's kprobe gets."""
        if owner(p) is not None:
            raise ProbeError(errno.EINVAL, "this kprobe is already registered", probe=p)
        if p.fault_handler is not None and self.m.semantics.kprobe_fault_handler == "no":
            raise ProbeError(
                errno.EOPNOTSUPP,
                'struct kprobe has no fault_handler since v5.14 ("kprobes: Remove '
                'kprobe::fault_handler")',
                probe=p,
                hint="Machine(semantics='seed') or a kernel release before 5.14 runs it",
            )
        addr, start = self.resolve(p) if at is None else (at, at)
        point = self.points.get(addr)
        if point is not None:  # register_aggr_kprobe(): a kretprobe's entry probe too
            # add_new_kprobe(): list_add_rcu() puts the new one at the head of ap->list, so
            # aggr_pre_handler() runs the newest first
            point.probes.insert(0, p)
        else:
            slot = self._get_insn_slot()
            # __copy_instruction(): the original instruction, recovered from under the other
            # kprobes' breakpoints
            code = self.recover_probed_text(addr, self.m.hooks.MAX_INSN_SIZE)
            try:
                before = self.recover_probed_text(start, addr - start) if addr > start else b""
                ainsn = self.m.hooks.arch_prepare_kprobe(addr, code, slot, before)
            except ProbeError:
                self._free_slots.append(slot)
                raise
            if ainsn.slot:
                self.m.write(slot, ainsn.slot)
            point = ProbePoint(addr=addr, ainsn=ainsn, slot=slot, probes=[p])
            self.points[addr] = point
        self.addr_of[p] = addr
        if internal is not None:
            self.internal[p] = internal
        set_owner(p, self.m)
        self._update_arming(point)
        self.m.record("register", addr, probe=p)
        return point

    def unregister(self, p: Kprobe) -> None:
        addr = self.addr_of.pop(p, None)
        if addr is None or owner(p) is not self.m:
            raise ProbeError(errno.EINVAL, "this kprobe is not registered here", probe=p)
        point = self.points[addr]
        point.probes.remove(p)
        self.internal.pop(p, None)
        set_owner(p, None)
        if not point.probes:  # the last one: disarm, free the slot
            if point.armed:
                self.m.hooks.arch_disarm_kprobe(self.m, addr, point.ainsn)
            del self.points[addr]
            self._free_slots.append(point.slot)
        else:
            self._update_arming(point)
        self.m.record("unregister", addr, probe=p)

    def set_disabled(self, p: Kprobe, disabled: bool) -> None:
        """enable_kprobe() / disable_kprobe()."""
        addr = self.addr_of.get(p)
        if addr is None:
            raise ProbeError(errno.EINVAL, "this kprobe is not registered here", probe=p)
        if disabled:
            p.flags |= KPROBE_FLAG_DISABLED
        else:
            p.flags &= ~KPROBE_FLAG_DISABLED
        self._update_arming(self.points[addr])

    def _update_arming(self, point: ProbePoint) -> None:
        """An aggregate stays armed while any child is enabled (kernel/kprobes.c)."""
        want = bool(point.enabled())
        if want and not point.armed:
            self.m.hooks.arch_arm_kprobe(self.m, point.addr)
        elif not want and point.armed:
            self.m.hooks.arch_disarm_kprobe(self.m, point.addr, point.ainsn)
        point.armed = want

    def insn_pages(self) -> int:
        """Where the insn cache's pages go: within +-2 GiB of the kernel text, as the
        kernel's alloc_insn_page() (module space) guarantees, so an arch that relocates a
        %rip-relative operand into the slot (__copy_instruction()) always can. Below an
        ET_EXEC's text at INSN_PAGES; below a relocated (ET_DYN) image's load address, the
        same layout shifted."""
        base = self.m.hooks.INSN_PAGES
        if self.m.load_bias:
            base += self.m.load_bias - RELOCATED_INSN_PAGES_BELOW
        text = [s.vaddr for s in self.m.image.segments if s.executable]
        if text and min(text) >> 63:
            # text in the kernel's half (a module's, at its running address): the pages go
            # just below it, as module_alloc() places them beside the modules
            base = min(text) - RELOCATED_INSN_PAGES_BELOW
        return base

    def _get_insn_slot(self) -> int:
        """get_insn_slot(): a slot in an executable page of the kernel's insn cache."""
        if not self._free_slots:
            page = self.insn_pages() + self._slot_pages * 0x1000
            self.m.map_internal(page, 0x1000)  # type: ignore[attr-defined]
            self._slot_pages += 1
            self._free_slots = [page + i * INSN_SLOT_SIZE for i in reversed(range(SLOTS_PER_PAGE))]
        return self._free_slots.pop()

    # --- the trap flow ---------------------------------------------------------------------

    def status_name(self) -> str:
        return STATUS_NAMES.get(self.kcb.status, hex(self.kcb.status))

    def kprobes_inc_nmissed_count(self, point: ProbePoint) -> None:
        """A miss counts on every child of an aggregate."""
        for p in point.probes:
            owner = self.internal.get(p)
            if owner is not None:
                owner.missed()
            else:
                inc_nmissed(p)

    def _set_current(self, point: ProbePoint, regs: PtRegs) -> None:
        self.kcb.current = point
        self.m.hooks.set_current_kprobe_flags(self.kcb, regs, point.ainsn)

    def _save_previous(self) -> None:
        k = self.kcb
        k.prev = PrevKprobe(k.current, k.status, k.old_flags, k.saved_flags)

    def _restore_previous(self) -> None:
        k = self.kcb
        k.current, k.status = k.prev.kp, k.prev.status
        k.old_flags, k.saved_flags = k.prev.old_flags, k.prev.saved_flags

    def _reset_current(self) -> None:
        self.kcb.current = None
        self.kcb.status = 0

    def _setup_singlestep(self, point: ProbePoint, regs: PtRegs, reenter: bool) -> None:
        if reenter:
            self._save_previous()
            self._set_current(point, regs)
            self.kcb.status = KPROBE_REENTER
        elif self.kcb.status != KPROBE_HIT_FAULT:  # HIT_FAULT stays for the step
            self.kcb.status = KPROBE_HIT_SS
        if point.ainsn.simulate:
            # arm64 setup_singlestep() -> arch_simulate_insn(): no step, post-processed at once
            self.m.hooks.arch_simulate_insn(self.m, regs, point.addr, point.ainsn)
            if self.m.trace_enabled:
                self.m.record("simulate", point.addr, self.status_name())
            self.post_kprobe_handler(point, regs)
            return
        self.m.hooks.prepare_singlestep(self.kcb, regs, point.addr, point.slot, point.ainsn)
        if self.m.trace_enabled:
            self.m.record(
                "singlestep", point.addr, self.status_name(), detail=f"slot {point.slot:#x}"
            )

    def breakpoint_handler(self, regs: PtRegs) -> bool:
        """kprobe_int3_handler() (arm64: kprobe_breakpoint_handler()): ours or not."""
        addr = self.m.hooks.kprobe_trap_addr(regs)
        point = self.points.get(addr)
        cur = self.kcb.current
        # kprobe_int3_handler(): kprobe_is_ss() and the int3 inside the current kprobe's slot:
        # "Most provably this is the second int3 for singlestep" (x86, v5.13 on)
        if (
            point is None
            and cur is not None
            and self.stepping()
            and cur.ainsn.extra.get("int3_step")
            and cur.slot < addr < cur.slot + INSN_SLOT_SIZE
        ):
            if self.m.trace_enabled:
                self.m.record("ss_int3", addr, self.status_name(), detail="step done")
            return self.debug_handler(regs)
        if point is None:
            return False
        if not point.armed:  # removed after we hit it: run the original instruction
            setattr(regs, self.m.hooks.ip_field(), addr)
            return True
        kcb = self.kcb
        for p in point.enabled():
            inc_hits(p)
        if kcb.current is not None:
            self._reenter(point, regs)
            return True
        self._set_current(point, regs)
        kcb.status = KPROBE_HIT_ACTIVE
        self.m.record("kprobe", addr, self.status_name(), probe=point.probes[0])
        if self._pre_handler(point, regs):
            # a nonzero pre_handler: no single-step, no post_handler; resume at regs->ip
            ip = int(getattr(regs, self.m.hooks.ip_field()))
            self.m.record("preempted", addr, detail=f"resume at {ip:#x}")
            self._reset_current()
        else:
            self._setup_singlestep(point, regs, reenter=False)
        return True

    def _reenter(self, point: ProbePoint, regs: PtRegs) -> None:
        """reenter_kprobe(): a hit while a handler runs: nmissed++, step it, no handlers."""
        if self.status_name() in self.m.hooks.REENTER_FATAL:
            raise ModelError(
                f"Unrecoverable kprobe detected at {point.addr:#x}: a probe hit in state "
                f"{self.status_name()} (reenter_kprobe(): the kernel BUG()s here)"
            )
        if self.kcb.in_trampoline_kprobe and not self.m.hooks.nested_step_possible():
            # "The aarch64 exception handling does not allow nesting of debug exceptions":
            # this probe's step would be a debug exception inside the trampoline kprobe's
            raise ModelError(
                f"unexpected single-step error: the kprobe at {point.addr:#x} was hit in a "
                "kretprobe handler run by the trampoline's kprobe, and its step cannot nest in "
                'that debug exception (the patch "Avoid using kprobe in the arm64 kretprobe '
                'trampoline"; Machine(kretprobe_trampoline="direct") is the fix)'
            )
        self.kprobes_inc_nmissed_count(point)
        self.m.record("miss", point.addr, self.status_name(), probe=point.probes[0],
                      detail="reentered")  # fmt: skip
        self._setup_singlestep(point, regs, reenter=True)

    def _run_guarded(self, point: ProbePoint, regs: PtRegs, fn: Callable[[], int]) -> int | None:
        """Run handlers with the fault-handling patch's trampoline: None if a fault abandoned
        them."""
        self.kcb.handler_regs = regs
        try:
            return fn()
        except HandlerAbandoned:
            self.m.record("abandoned", point.addr, self.status_name())
            return None
        finally:
            self.kcb.instance = None

    def _pre_handler(self, point: ProbePoint, regs: PtRegs) -> int:
        """aggr_pre_handler(): children in order; the first nonzero return stops the rest."""

        def run() -> int:
            for p in point.enabled():
                owner = self.internal.get(p)
                if owner is not None:  # pre_handler_kretprobe() (0), trampoline_probe_handler (1)
                    if owner.pre_handler(regs):
                        return 1
                    continue
                if p.pre_handler is None:
                    continue
                self.kcb.instance = p
                ret = call_handler(self.m, p, p.pre_handler, p, regs)
                if ret:
                    return 1
            return 0

        ret = self._run_guarded(point, regs, run)
        if ret is None:  # HIT_FAULT -> single-step the original, no post_handler
            return 0
        return ret

    def debug_handler(self, regs: PtRegs) -> bool:
        """kprobe_debug_handler(): the step out of line is done."""
        kcb = self.kcb
        cur = kcb.current
        if cur is None or cur is self.busy:
            return False
        if not self.m.hooks.kprobe_ss_hit(regs, cur.slot):
            return False  # "not ours, kprobes should ignore it": no handler, a kernel oops
        if self.m.semantics.kprobe_post_handler == "before_resume":
            # the i386 fault-handling patch's post_kprobe_handler(): HIT_SSDONE and the
            # post_handler with the registers the step left, then resume_execution()
            self._post_handlers(cur, regs)
            self.m.hooks.resume_execution(kcb, regs, self.m, cur.addr, cur.slot, cur.ainsn)
            self.m.record("ssdone", cur.addr, self.status_name())
            self._finish(kcb)
            return True
        self.m.hooks.resume_execution(kcb, regs, self.m, cur.addr, cur.slot, cur.ainsn)
        self.m.record("ssdone", cur.addr, self.status_name())
        self.post_kprobe_handler(cur, regs)
        return True

    def post_kprobe_handler(self, cur: ProbePoint, regs: PtRegs) -> None:
        """The post_handlers after the step (or the simulation), then the previous kprobe or
        none current (kprobe_post_process(), arm64 post_kprobe_handler())."""
        self._post_handlers(cur, regs)
        self._finish(self.kcb)

    def _finish(self, kcb: KprobeCtlblk) -> None:
        if kcb.status == KPROBE_REENTER:
            self._restore_previous()
        else:
            self._reset_current()

    def _post_handlers(self, cur: ProbePoint, regs: PtRegs) -> None:
        kcb = self.kcb
        if kcb.status not in (KPROBE_REENTER, KPROBE_HIT_FAULT):
            posts = [p for p in cur.enabled() if p.post_handler is not None]
            if posts:
                kcb.status = KPROBE_HIT_SSDONE
                self.m.record("post", cur.addr, self.status_name(), probe=posts[0])

                def run() -> int:
                    for p in posts:  # aggr_post_handler()
                        self.kcb.instance = p
                        assert p.post_handler is not None
                        call_handler(self.m, p, p.post_handler, p, regs, 0)
                    return 0

                self._run_guarded(cur, regs, run)

    def stepping(self) -> bool:
        return self.kcb.current is not None and self.kcb.status in (
            KPROBE_HIT_SS,
            KPROBE_REENTER,
            KPROBE_HIT_FAULT,
        )

    def in_handler(self) -> bool:
        """A pre/post handler runs (not kprobe_busy's kretprobe handler: no trampoline to
        abandon there, its faults take the ordinary path)."""
        cur = self.kcb.current
        return (
            cur is not None
            and cur is not self.busy
            and self.kcb.status in (KPROBE_HIT_ACTIVE, KPROBE_HIT_SSDONE)
        )

    def singlestep_fault(self, regs: PtRegs) -> None:
        """kprobe_fault_handler() ("Kprobes- robust fault handling for i386"): the stepped
        instruction faulted.

        Reset the probe, ip back to the probe address; the system fault handler then fixes
        the fault and the instruction re-executes (so the probe hits again).
        """
        kcb = self.kcb
        cur = kcb.current
        assert cur is not None
        self.m.hooks.singlestep_fault_fixup(kcb, regs, cur.addr)
        self.m.record("fault", cur.addr, self.status_name(), detail="while single-stepping")
        if kcb.status == KPROBE_REENTER:
            self._restore_previous()
        else:
            self._reset_current()

    def handler_fault(self, trapnr: int) -> bool:
        """kprobe_fault_handler() ("Kprobes- robust fault handling for i386"): a pre/post
        handler faulted.

        The probe's fault_handler runs first; nonzero means handled (the access is retried).
        Otherwise nmissed++, status HIT_FAULT, and the handler is abandoned (the caller
        raises HandlerAbandoned once the system fault handler has run). Since v5.14: nothing
        but the ordinary fixup (the row kprobe_fault_handler of kuprobe.model.semantics).
        """
        kcb = self.kcb
        cur = kcb.current
        assert cur is not None
        regs = kcb.handler_regs
        inst = kcb.instance
        owner = inst if inst is not None else (cur.probes[0] if cur.probes else None)
        if self.m.semantics.kprobe_fault_handler == "no":
            # kprobe_fault_handler() (v5.14 on) leaves a fault in a pre/post handler alone:
            # "kprobes: Do not increment probe miss count in the fault handler" removed its
            # nmissed++; the fault is fixed up as any kernel fault and the handler goes on
            self.m.record("fault", cur.addr, self.status_name(), probe=owner,
                          detail=f"trap {trapnr} in handler: fixed up")  # fmt: skip
            return False
        if owner is not None and owner.fault_handler is not None and regs is not None:
            ret = call_handler(self.m, owner, owner.fault_handler, owner, regs, trapnr)
            self.m.record("fault", cur.addr, self.status_name(), probe=owner,
                          detail=f"trap {trapnr} in handler, fault_handler -> {ret}")  # fmt: skip
            if ret:
                return True
        self.kprobes_inc_nmissed_count(cur)
        kcb.status = KPROBE_HIT_FAULT
        self.m.record("fault", cur.addr, self.status_name(), detail="handler abandoned")
        return False

    # kprobe_busy_begin()/end(): kretprobe handlers run with a dummy probe current

    def busy_begin(self) -> tuple[ProbePoint | None, int]:
        saved = (self.kcb.current, self.kcb.status)
        self.kcb.current = self.busy
        self.kcb.status = KPROBE_HIT_ACTIVE
        return saved

    def busy_end(self, saved: tuple[ProbePoint | None, int]) -> None:
        self.kcb.current, self.kcb.status = saved
