"""uprobes: (inode, offset) probes shared by every process mapping the file.

Mirrors kernel/events/uprobes.c: the global uprobe tree (here one entry per probed file, as
the uprobe_module of the patch "Kprobes: userspace probes new interfaces", dropped with its
last probe), register_for_each_vma/uprobe_mmap, consumers with filter_chain and
UPROBE_HANDLER_REMOVE (handler_chain), the utask states of the patch "uprobes/core: handle
breakpoint and signal step exception", the per-process XOL area, pre_ssout/handle_singlestep,
uprobe_deny_signal, and uretprobes (prepare_uretprobe, cleanup_return_instances,
handle_trampoline, MAX_URETPROBE_DEPTH, arch_uretprobe_is_alive).
"""

from __future__ import annotations

import errno
import signal
import weakref
from dataclasses import dataclass, field

from kuprobe.elf import ElfImage
from kuprobe.errors import ProbeError
from kuprobe.model.arch import ARCH_HOOKS, get_arch
from kuprobe.model.arch.base import (
    RP_CHECK_CALL,
    RP_CHECK_CHAIN_CALL,
    RP_CHECK_RET,
    ArchSpecificInsn,
    ArchUprobeTask,
)
from kuprobe.model.core.common import MachineLike, ModelError, RegsChange, call_handler
from kuprobe.model.semantics import TODAY, Semantics
from kuprobe.probes import (
    UPROBE_HANDLER_REMOVE,
    Uprobe,
    inc_hits,
    inc_ret_hits,
    owner,
    set_identity,
    set_owner,
)
from kuprobe.regs import PtRegs
from kuprobe.resolve import resolve_uprobe
from kuprobe.task import Task

# include/linux/uprobes.h: enum uprobe_task_state (UTASK_BP_HIT: the uprobes/core patch)
UTASK_RUNNING = "RUNNING"
UTASK_BP_HIT = "BP_HIT"
UTASK_SSTEP = "SSTEP"
UTASK_SSTEP_ACK = "SSTEP_ACK"
UTASK_SSTEP_TRAPPED = "SSTEP_TRAPPED"
# include/linux/uprobes.h: how deep uretprobes nest in one task before new ones are omitted
MAX_URETPROBE_DEPTH = 64


@dataclass(eq=False)
class UprobeEntry:
    """``struct uprobe``: one probed (inode, offset) and its consumers."""

    inode: tuple[int, int]
    offset: int
    path: str
    arch: ArchSpecificInsn
    consumers: list[Uprobe] = field(default_factory=list)
    ref_ctr_offset: int = 0  # one per uprobe (kernel: a second, different one is EINVAL)


@dataclass(eq=False)
class ProbedFile:
    """The uprobe_module of the patch "Kprobes: userspace probes new interfaces": the
    bookkeeping of one probed file."""

    inode: tuple[int, int]
    path: str
    uprobes: dict[int, UprobeEntry] = field(default_factory=dict)


@dataclass(eq=False)
class ReturnInstance:
    """``struct return_instance``: one hijacked return in flight."""

    uprobe: UprobeEntry
    func: int
    stack: int
    orig_ret_vaddr: int
    chained: bool


@dataclass
class Thread:
    """The part of ``thread_struct`` uprobes read: the last trap (x86 ``trap_nr``, arm64
    ``fault_code``; each arch's hooks use their own)."""

    trap_nr: int = 0
    fault_code: int = 0


@dataclass
class UprobeTask:
    """``struct uprobe_task``."""

    state: str = UTASK_RUNNING
    active_uprobe: UprobeEntry | None = None
    vaddr: int = 0
    xol_vaddr: int = 0
    autask: ArchUprobeTask = field(default_factory=ArchUprobeTask)
    return_instances: list[ReturnInstance] = field(default_factory=list)  # newest last

    @property
    def depth(self) -> int:
        return len(self.return_instances)


class XolArea:
    """``struct xol_area``: a page of slots; slot 0 is the uretprobe trampoline."""

    def __init__(self, m: MachineLike) -> None:
        arch = m.hooks
        self.vaddr = arch.XOL_AREA
        self.slot_size = arch.UPROBE_XOL_SLOT_BYTES
        m.map_internal(self.vaddr, 0x1000)  # type: ignore[attr-defined]
        m.write(self.vaddr, arch.UPROBE_SWBP_INSN)  # the trampoline (get_trampoline_vaddr)
        self.free = list(reversed(range(1, 0x1000 // self.slot_size)))
        self.contents: dict[int, bytes] = {}

    def copy_insn(self, m: MachineLike, vaddr: int, insn: bytes) -> None:
        """xol_get_insn_slot()'s copy: skipped when the slot holds these bytes already."""
        if self.contents.get(vaddr) != insn:
            m.write(vaddr, insn)
            self.contents[vaddr] = insn

    def get_slot(self) -> int:
        if not self.free:
            # xol_take_insn_slot(): wait_event(area->wq, ...) until another task frees one;
            # the model's tasks are this Machine's nested calls, none of which can go on
            raise ModelError(
                "the XOL area has no free slot: xol_take_insn_slot() would wait for a task "
                "to free one, and no task here can"
            )
        return self.vaddr + self.free.pop() * self.slot_size

    def free_slot(self, vaddr: int) -> None:
        self.free.append((vaddr - self.vaddr) // self.slot_size)


class UprobeRegistry:
    """All uprobes of this interpreter, and the processes (Machines) mapping probed files."""

    def __init__(self) -> None:
        self.files: dict[tuple[int, int], ProbedFile] = {}
        self.mms: weakref.WeakSet[UprobeMm] = weakref.WeakSet()

    def entry(self, inode: tuple[int, int], offset: int) -> UprobeEntry | None:
        f = self.files.get(inode)
        return None if f is None else f.uprobes.get(offset)

    def resolve(self, up: Uprobe) -> tuple[ElfImage, int]:
        """The file and the file offset ``up`` names, checked as uprobe_register() does
        (kuprobe/resolve.py: the same rules as the live backend's)."""
        t = resolve_uprobe(
            up.path,
            symbol_name=up.symbol_name,
            offset=up.offset,
            runs=tuple(ARCH_HOOKS),
            where="the model",
            unsafe=bool(up.unsafe),
        )
        return t.image, t.offset

    def register(self, up: Uprobe, semantics: Semantics = TODAY) -> None:
        """``up`` in every process mapping its file; its instruction analysed with the rules
        of ``semantics`` (the registering Machine's kernel: arch_uprobe_analyze_insn() is the
        kernel's)."""
        if owner(up) is not None:
            raise ProbeError(errno.EINVAL, "this uprobe is already registered", probe=up)
        image, offset = self.resolve(up)  # one image per file version, shared: not closed
        arch = get_arch(image.arch)
        arch.semantics = semantics.for_arch(arch.name)
        entry = self.entry(image.inode, offset)
        if entry is None:
            insn = image.read(offset, arch.MAX_UINSN_BYTES)
            vaddr = image.offset_to_vaddr(offset)
            entry = UprobeEntry(
                image.inode, offset, up.path, arch.arch_uprobe_analyze_insn(insn, vaddr)
            )
            pf = self.files.setdefault(image.inode, ProbedFile(image.inode, up.path))
            pf.uprobes[offset] = entry
        if up.ref_ctr_offset:
            if entry.ref_ctr_offset and entry.ref_ctr_offset != up.ref_ctr_offset:
                raise ProbeError(
                    errno.EINVAL,
                    f"ref_ctr_offset {up.ref_ctr_offset:#x} differs from this uprobe's "
                    f"{entry.ref_ctr_offset:#x}",
                    probe=up,
                )
            entry.ref_ctr_offset = up.ref_ctr_offset
        # kernel/events/uprobes.c: consumer_add() puts the new consumer at the head of the
        # list (list_add_rcu; before 6.12 `uc->next = uprobe->consumers`): the newest is
        # called first.
        entry.consumers.insert(0, up)
        set_identity(up, image.inode, offset)
        set_owner(up, self)
        for mm in list(self.mms):  # register_for_each_vma()
            if mm.inode == entry.inode:
                mm.sync(entry)

    def unregister(self, up: Uprobe) -> None:
        if owner(up) is not self or up.inode is None or up.file_offset is None:
            raise ProbeError(errno.EINVAL, "this uprobe is not registered", probe=up)
        entry = self.entry(up.inode, up.file_offset)
        assert entry is not None
        entry.consumers.remove(up)
        set_owner(up, None)
        for mm in list(self.mms):
            if mm.inode == entry.inode:
                mm.sync(entry)
        if not entry.consumers:
            pf = self.files[entry.inode]
            del pf.uprobes[entry.offset]
            if not pf.uprobes:  # the file's entry goes with its last probe
                del self.files[entry.inode]

    def mmap(self, mm: UprobeMm) -> None:
        """uprobe_mmap(): a new process maps a file: install the probes that want it."""
        self.mms.add(mm)
        pf = self.files.get(mm.inode)
        if pf is not None:
            for entry in pf.uprobes.values():
                mm.sync(entry)


REGISTRY = UprobeRegistry()


def changed_detail(before: list[int], regs: PtRegs, prefix: str = "") -> RegsChange:
    """For the trace: the registers an arch hook changed (``before`` is ``regs.values()`` from
    before the hook), written as text when the trace is read (core/common.py)."""
    return (regs.layout.fields, before, regs.values(), prefix)


def pid_wants(up: Uprobe, task: Task) -> bool:
    """The probe's pid (perf's per-process filter, which its own handler applies) accepts
    ``task``."""
    return up.pid is None or up.pid == task.tgid


def consumer_wants(up: Uprobe, task: Task) -> bool:
    """consumer_filter(): the consumer's filter (and the probe's pid) accept ``task``."""
    if not pid_wants(up, task):
        return False
    uc = up.consumer
    if uc is None or uc.filter is None:
        return True
    return bool(uc.filter(uc, task))


class UprobeMm:
    """One process's uprobe state: its breakpoints, XOL area, utask and return instances."""

    def __init__(self, m: MachineLike, inode: tuple[int, int]) -> None:
        self.m = m
        self.inode = inode
        self.installed: dict[int, UprobeEntry] = {}
        self.refed: dict[int, int] = {}  # vaddr -> the ref_ctr_offset counted for it
        self.xol: XolArea | None = None
        self.utask = UprobeTask()
        self.thread = Thread()

    @property
    def mm(self) -> MachineLike:
        """The task's memory, for the arch hooks (kuprobe.model.arch.base.Current)."""
        return self.m

    # --- breakpoints ---------------------------------------------------------------------

    def vaddr_of(self, entry: UprobeEntry) -> int:
        return self.m.load_bias + int(self.m.image.offset_to_vaddr(entry.offset))

    def filter_chain(self, entry: UprobeEntry) -> bool:
        """filter_chain(): a consumer wants this process (the seed's design puts the
        breakpoint in every process: its filters run at each hit)."""
        if self.m.semantics.uprobe_filter == "at_hit":
            return any(pid_wants(up, self.m.task) for up in entry.consumers)
        return any(consumer_wants(up, self.m.task) for up in entry.consumers)

    def sync(self, entry: UprobeEntry) -> None:
        """Install or remove the breakpoint as the consumers now want (install_breakpoint)."""
        vaddr = self.vaddr_of(entry)
        want = bool(entry.consumers) and self.filter_chain(entry)
        have = self.installed.get(vaddr) is entry
        if want and not have:
            self.m.write(vaddr, self.m.hooks.UPROBE_SWBP_INSN)
            self.installed[vaddr] = entry
            self.m.record("install", vaddr, detail=f"uprobe {entry.path}:{entry.offset:#x}")
        elif have and not want:
            self.remove_breakpoint(vaddr, entry)
        if want and entry.ref_ctr_offset and vaddr not in self.refed:
            self._update_ref_ctr(entry.ref_ctr_offset, +1)  # install_breakpoint()
            self.refed[vaddr] = entry.ref_ctr_offset

    def remove_breakpoint(self, vaddr: int, entry: UprobeEntry) -> None:
        """set_orig_insn(): the original bytes back in this process."""
        n = len(self.m.hooks.UPROBE_SWBP_INSN)
        self.m.write(vaddr, entry.arch.insn[:n])
        del self.installed[vaddr]
        ref = self.refed.pop(vaddr, 0)
        if ref:
            self._update_ref_ctr(ref, -1)  # remove_breakpoint()
        self.m.record("remove", vaddr, detail=f"uprobe {entry.path}:{entry.offset:#x}")

    def _update_ref_ctr(self, ref_ctr_offset: int, d: int) -> None:
        """update_ref_ctr(): the USDT semaphore (a short) counts the probes that want it."""
        vaddr = self.m.load_bias + self.m.image.offset_to_vaddr(ref_ctr_offset)
        val = int.from_bytes(self.m.read(vaddr, 2), "little")
        self.m.write(vaddr, ((val + d) & 0xFFFF).to_bytes(2, "little"))

    def get_xol_area(self) -> XolArea:
        if self.xol is None:  # xol_add_vma(), on first use
            self.xol = XolArea(self.m)
        return self.xol

    def set_state(self, state: str, addr: int) -> None:
        self.utask.state = state
        self.m.record("utask", addr, state)

    # --- the breakpoint (handle_swbp) ------------------------------------------------------

    def handle_swbp(self, regs: PtRegs) -> bool:
        """Returns False if the breakpoint is not a uprobe's (the caller sends SIGTRAP)."""
        m = self.m
        arch = m.hooks
        bp_vaddr = arch.uprobe_get_swbp_addr(regs)
        if self.xol is not None and bp_vaddr == self.xol.vaddr:
            self.handle_trampoline(regs)
            return True
        entry = self.installed.get(bp_vaddr)
        if entry is None:
            insn = m.read(bp_vaddr, len(arch.UPROBE_SWBP_INSN))
            if arch.is_trap_insn(insn):
                return False  # not ours: SIGTRAP
            setattr(regs, arch.ip_field(), bp_vaddr)  # removed meanwhile: restart
            return True
        utask = self.utask
        if m.semantics.utask_bp_hit == "yes":  # the seed's state, gone since about v3.7
            self.set_state(UTASK_BP_HIT, bp_vaddr)
        # "change it in advance for ->handler() and restart"
        setattr(regs, arch.ip_field(), bp_vaddr)
        self.handler_chain(entry, regs, bp_vaddr)
        if arch.arch_uprobe_skip_sstep(entry.arch, regs, m):
            m.record("skip_sstep", bp_vaddr, detail="emulated, no single-step")
            self.set_state(UTASK_RUNNING, bp_vaddr)
            return True
        # pre_ssout(): a slot, the arch's pre_xol, then step
        xol = self.get_xol_area()
        utask.xol_vaddr = xol.get_slot()
        xol.copy_insn(
            m, utask.xol_vaddr, arch.arch_uprobe_copy_ixol(entry.arch, bp_vaddr, utask.xol_vaddr)
        )
        utask.vaddr = bp_vaddr
        before = regs.values() if m.trace_enabled else None
        arch.arch_uprobe_pre_xol(entry.arch, regs, self)
        if before is not None:
            m.record("pre_xol", bp_vaddr, detail=changed_detail(before, regs))
        utask.active_uprobe = entry
        self.set_state(UTASK_SSTEP, bp_vaddr)
        return True

    def handler_chain(self, entry: UprobeEntry, regs: PtRegs, bp_vaddr: int) -> None:
        """handler_chain(), by the row uprobe_filter (kuprobe.model.semantics): "at_hit" (the
        seed's: a consumer's filter runs at each hit, return values mean nothing); "per_mm"
        (v3.9: every consumer is called, all returning UPROBE_HANDLER_REMOVE unapply the
        breakpoint in this process); "per_mm_recheck" (v6.12: only if filter_chain() then
        finds no consumer still wanting it)."""
        m = self.m
        task = m.task
        rule = m.semantics.uprobe_filter
        remove = rule != "at_hit"
        need_prep = False
        for up in list(entry.consumers):
            if not consumer_wants(up, task):
                # "at_hit": the seed's handler_chain() asks the filter. Since v3.9 the kernel
                # calls every consumer; a kuprobe consumer's handler asks its filter (and pid)
                # first and declines with UPROBE_HANDLER_REMOVE, as perf's uprobe_perf_func()
                # does with uprobe_perf_filter(): not called, and its vote is "remove"
                continue
            inc_hits(up)
            uc = up.consumer
            m.record("uprobe", bp_vaddr, self.utask.state, probe=up)
            if uc is not None and uc.handler is not None:
                rc = call_handler(m, up, uc.handler, uc, regs)
                remove = remove and rc == UPROBE_HANDLER_REMOVE
            else:
                remove = False
            if uc is not None and uc.ret_handler is not None:
                need_prep = True
        if need_prep and not remove:  # handler_chain(): a consumer without a handler keeps it
            self.prepare_uretprobe(entry, regs, bp_vaddr)
        if rule == "per_mm_recheck" and remove and self.filter_chain(entry):
            # "re-check that removal is still required": a consumer still wants this process
            m.record("uprobe", bp_vaddr, detail="UPROBE_HANDLER_REMOVE: filter_chain() keeps it")
            remove = False
        if remove and entry.consumers and bp_vaddr in self.installed:
            # every handler asked: no more calls from this process (unapply_uprobe)
            self.remove_breakpoint(bp_vaddr, entry)

    # --- the step out of line -------------------------------------------------------------

    def post_sstep_notifier(self) -> bool:
        """uprobe_post_sstep_notifier(): our step finished (the debug trap)."""
        if self.utask.active_uprobe is None:
            return False
        self.set_state(UTASK_SSTEP_ACK, self.utask.vaddr)
        return True

    def handle_singlestep(self, regs: PtRegs) -> None:
        m = self.m
        utask = self.utask
        entry = utask.active_uprobe
        assert entry is not None
        before = regs.values() if m.trace_enabled else None
        if utask.state == UTASK_SSTEP_ACK:
            ok = m.hooks.arch_uprobe_post_xol(entry.arch, regs, self)
            if not ok:  # the step trapped: restart the probed insn
                setattr(regs, m.hooks.ip_field(), utask.vaddr)
            if before is not None:
                m.record("post_xol", utask.vaddr, detail=changed_detail(before, regs))
        elif utask.state == UTASK_SSTEP_TRAPPED:
            m.hooks.arch_uprobe_abort_xol(entry.arch, regs, self)
            if before is not None:
                detail = changed_detail(before, regs, "ip back to the probe: ")
                m.record("abort_xol", utask.vaddr, detail=detail)
        assert self.xol is not None
        self.xol.free_slot(utask.xol_vaddr)
        utask.active_uprobe = None
        self.set_state(UTASK_RUNNING, utask.vaddr)

    def deny_signal(self, fatal: bool) -> bool:
        """uprobe_deny_signal(): no signal while single-stepping; a fatal one aborts the step."""
        utask = self.utask
        if utask.active_uprobe is None:
            return False
        if fatal or self.m.hooks.arch_uprobe_xol_was_trapped(self):
            self.set_state(UTASK_SSTEP_TRAPPED, utask.vaddr)
        return True

    # --- uretprobes -----------------------------------------------------------------------

    def prepare_uretprobe(self, entry: UprobeEntry, regs: PtRegs, bp_vaddr: int) -> None:
        m = self.m
        utask = self.utask
        if utask.depth >= MAX_URETPROBE_DEPTH:
            m.record("uretprobe", bp_vaddr, detail="omitted due to nestedness limit")
            return
        trampoline = self.get_xol_area().vaddr
        orig = m.hooks.arch_uretprobe_hijack_return_addr(m, regs, trampoline)
        chained = orig == trampoline
        # cleanup_return_instances(): drop the frames a longjmp() abandoned
        ctx = RP_CHECK_CHAIN_CALL if chained else RP_CHECK_CALL
        ris = utask.return_instances
        while ris and not m.hooks.arch_uretprobe_is_alive(ris[-1].stack, ctx, regs):
            dead = ris.pop()
            m.record("uretprobe", dead.func, detail="dropped: its frame is gone (longjmp)")
        if chained:
            if not utask.return_instances:
                return  # "unable to set uretprobe": the kernel kills the task here
            orig = utask.return_instances[-1].orig_ret_vaddr
        sp = int(getattr(regs, m.hooks.stack_pointer_field()))
        utask.return_instances.append(ReturnInstance(entry, bp_vaddr, sp, orig, chained))

    def handle_trampoline(self, regs: PtRegs) -> None:
        m = self.m
        utask = self.utask
        if not utask.return_instances:
            # handle_trampoline(): "goto sigill": uprobe_warn(current, "handle uretprobe,
            # sending SIGILL."); force_sig(SIGILL)
            trampoline = self.get_xol_area().vaddr
            m.record("uretprobe", trampoline, detail="no return instance: SIGILL")
            m.force_sig(signal.SIGILL, "(a uretprobe trampoline hit with no return instance)")
            return
        ris = utask.return_instances
        while True:
            # find_next_ret_chain(): this chain is the newest instance and those chained to it
            n = len(ris) - 1
            while ris[n].chained and n > 0:
                n -= 1
            chain = ris[n:]
            # "We should throw out the frames invalidated by longjmp(). If this chain is
            # valid, then the next one should be alive or NULL"
            valid = n == 0 or m.hooks.arch_uretprobe_is_alive(ris[n - 1].stack, RP_CHECK_RET,
                                                              regs)  # fmt: skip
            setattr(regs, m.hooks.ip_field(), chain[-1].orig_ret_vaddr)
            del ris[n:]
            for ri in reversed(chain):  # handle_uretprobe_chain(), newest first
                if valid:
                    self.handle_uretprobe_chain(ri, regs)
                else:
                    m.record("uretprobe", ri.func, detail="dropped: its frame is gone (longjmp)")
            if valid:
                return
            # not valid means n > 0: an older chain is left for the next round, as the
            # kernel's valid = !next || arch_uretprobe_is_alive(next, RP_CHECK_RET, regs)

    def handle_uretprobe_chain(self, ri: ReturnInstance, regs: PtRegs) -> None:
        m = self.m
        for up in list(ri.uprobe.consumers):
            uc = up.consumer
            if uc is None or uc.ret_handler is None or not consumer_wants(up, m.task):
                continue
            inc_ret_hits(up)
            m.record("uretprobe", ri.func, probe=up, detail=f"return to {ri.orig_ret_vaddr:#x}")
            call_handler(m, up, uc.ret_handler, uc, ri.func, regs)

    def save_task(self) -> tuple[UprobeTask, Thread]:
        """Set the utask aside for a nested call (see Machine.call)."""
        saved = (self.utask, self.thread)
        self.utask, self.thread = UprobeTask(), Thread(saved[1].trap_nr)
        return saved

    def restore_task(self, saved: tuple[UprobeTask, Thread]) -> None:
        if self.utask.active_uprobe is not None and self.xol is not None:
            self.xol.free_slot(self.utask.xol_vaddr)
        self.utask, self.thread = saved

    def reset(self) -> None:
        """The task died: forget its in-flight state (uprobe_free_utask)."""
        if self.utask.active_uprobe is not None and self.xol is not None:
            self.xol.free_slot(self.utask.xol_vaddr)
        self.utask = UprobeTask()
        self.thread = Thread()
