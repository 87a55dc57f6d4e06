"""``Machine``: one ELF in the emulator, as a process (user space) or as kernel text.

The Machine is the model's CPU-and-kernel glue: it maps the ELF, runs calls per the arch's
ABI, and routes each CPU trap the way the kernel's entry code does (breakpoint -> the kprobe or
uprobe breakpoint handler, the debug trap -> the single-step handler, a page fault -> the
kprobe fault handler first, then the system fault handler, signals on the way back to user
space). The probe semantics live in ``kuprobe.model.core``; the arch in ``kuprobe.model.arch``.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from operator import ne
from typing import Any

from kuprobe.arch import arch_info
from kuprobe.elf import ElfImage
from kuprobe.errors import KuprobeValueError, ProbeError
from kuprobe.model._register import ProbeRegistration
from kuprobe.model._signals import SignalDelivery, SignalHandler
from kuprobe.model.arch import get_arch
from kuprobe.model.arch.base import TRAP_BREAKPOINT, TRAP_SINGLESTEP
from kuprobe.model.core.common import (
    Detail,
    HandlerAbandoned,
    ModelError,
    Restart,
    Trace,
)
from kuprobe.model.core.kprobes import KprobeTable
from kuprobe.model.core.kretprobes import KretprobeCore
from kuprobe.model.core.uprobes import REGISTRY, UprobeMm
from kuprobe.model.emu import PAGE_SIZE, PROT_ALL, Emu, EmuError, page_ceil, page_floor
from kuprobe.model.semantics import Semantics, resolve
from kuprobe.regs import STACK_WORDS, PtRegs, model_regs, regs_class, set_stack
from kuprobe.task import Task

DEFAULT_MAX_INSNS = 200_000_000
# A handler whose fault_handler claims every fault but never fixes it would retry forever.
MAX_FAULT_RETRIES = 16
_pids = itertools.count(1000)


@dataclass
class Vma:
    """A valid range of the address space; pages not in the emulator are not present yet."""

    start: int
    end: int
    prot: int
    name: str


class _UserFault(BaseException):
    """A user access to no mapping: SIGSEGV is pending, handle it on the way out."""


class Machine(ProbeRegistration, SignalDelivery):
    """An ELF running in the emulator, with the kernel's probe semantics around it."""

    def __init__(
        self, image: ElfImage, *, space: str = "user", trace: bool = True,
        max_insns: int = DEFAULT_MAX_INSNS, comm: str | None = None, strict: bool = False,
        semantics: str | Semantics = "today", kretprobe_trampoline: str = "direct",
    ) -> None:  # fmt: skip
        if space not in ("user", "kernel"):
            raise KuprobeValueError(f"space must be 'user' or 'kernel', not {space!r}")
        self.image = image
        self.space = space
        self.hooks = get_arch(image.arch)
        # kuprobe.model.semantics: "today", "seed", a kernel release or a Semantics
        self.semantics: Semantics = resolve(semantics).for_arch(self.hooks.name)
        self.hooks.semantics = self.semantics
        self.arch: str = self.hooks.name
        self.trace_enabled = trace
        self.strict = strict
        self.trace = Trace()
        self.errors: list[tuple[Any, BaseException]] = []
        self.max_insns = max_insns
        pid = next(_pids)
        self.task = Task(pid, pid, comm or os.path.basename(image.path)[:15])
        self._depth = 0
        self._vmas: list[Vma] = []
        self._pages: set[int] = set()
        self._pending_signals: list[int] = []
        self._sigactions: dict[int, SignalHandler] = {}
        self._signal_why = ""
        self._fault_repeats = 0
        h = self.hooks
        # load_elf_binary(): an ET_DYN file goes to ELF_ET_DYN_BASE (no randomisation)
        self.load_bias = h.ELF_ET_DYN_BASE if image.is_pie else 0
        self.emu = Emu(arch_info(h.name).unicorn, h.uc_arch, h.uc_regs)
        self.emu.set_pc_reg(h.ip_field())
        self.emu.set_callbacks(self._on_interrupt, self._on_unmapped)
        self._setup_regs_fast_path()
        self._load_segments()
        self.map(h.STACK_TOP - h.STACK_SIZE, h.STACK_SIZE, name="[stack]")
        self.map_internal(h.CALL_RETURN, PAGE_SIZE)
        self.kprobes: KprobeTable | None = None
        self.kretprobes: KretprobeCore | None = None
        self.uprobes: UprobeMm | None = None
        if space == "kernel":
            self.kprobes = KprobeTable(self)
            self.kretprobes = KretprobeCore(self, self.kprobes, kretprobe_trampoline)
            self.map_internal(h.KRETPROBE_TRAMPOLINE, PAGE_SIZE)
            self.kretprobes.install_trampoline()
        else:
            self.uprobes = UprobeMm(self, image.inode)
            REGISTRY.mmap(self.uprobes)  # uprobe_mmap(): the file's existing uprobes apply here too

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, space: str = "user", trace: bool = True,
        max_insns: int = DEFAULT_MAX_INSNS, strict: bool = False,
        semantics: str | Semantics = "today", kretprobe_trampoline: str = "direct",
    ) -> Machine:  # fmt: skip
        """Load an ELF (static or self-contained code); its arch comes from the file.

        ``space``: "user" (a process: uprobes) or "kernel" (its text is kernel text:
        kprobes, kretprobes). ``trace``: record ``m.trace``. ``max_insns``: the bound of one
        call. ``strict``: a handler that raises fails the call (default: counted, logged).
        ``semantics``: "today" (today's kernels, what the cross-check runs against), "seed"
        (the designs of the patches the model grew from), a kernel release ("6.1", `uname -r`:
        that release's rules) or a ``kuprobe.model.semantics.Semantics``, where they differ
        (docs/semantics.md lists every difference).
        ``kretprobe_trampoline``: "direct" (the trampoline calls the handlers itself) or
        "kprobe" (the earlier design: a kprobe on the trampoline runs them).
        """
        return cls(
            ElfImage(os.fspath(path)), space=space, trace=trace, max_insns=max_insns,
            strict=strict, semantics=semantics, kretprobe_trampoline=kretprobe_trampoline,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"Machine({self.image.path!r}, arch={self.arch}, space={self.space})"

    # --- memory ------------------------------------------------------------------------------

    def _load_segments(self) -> None:
        pages: dict[int, int] = {}
        bias = self.load_bias
        for seg in self.image.segments:
            first, end = page_floor(bias + seg.vaddr), page_ceil(bias + seg.vaddr + seg.memsz)
            for page in range(first, end, PAGE_SIZE):
                pages[page] = pages.get(page, 0) | seg.flags
        for start, end in _runs(sorted(pages)):
            self.map(start, end - start, name=os.path.basename(self.image.path))
        for seg in self.image.segments:
            if seg.filesz:
                self.emu.write(bias + seg.vaddr, self.image.read(seg.offset, seg.filesz))

    def map(
        self, addr: int, size: int, present: bool = True, *, prot: int = PROT_ALL,
        name: str = "",
    ) -> None:  # fmt: skip
        """A valid range; with ``present=False`` its pages fault in on first touch."""
        start, end = page_floor(addr), page_ceil(addr + size)
        self._vmas.append(Vma(start, end, prot, name))
        if present:
            pages = [p for p in range(start, end, PAGE_SIZE) if p not in self._pages]
            for run_start, run_end in _runs(pages):  # one emulator region per run
                self.emu.map(run_start, run_end - run_start, prot)
            self._pages.update(pages)

    def map_internal(self, addr: int, size: int) -> None:
        """Memory of the model itself (slots, trampolines, the call return page)."""
        self.map(addr, size, name="[model]")

    def _vma_at(self, addr: int) -> Vma | None:
        for v in self._vmas:
            if v.start <= addr < v.end:
                return v
        return None

    def _make_present(self, addr: int) -> None:
        """The system fault handler: the page of a valid address becomes present."""
        page = page_floor(addr)
        if page not in self._pages:
            vma = self._vma_at(page)
            self.emu.map(page, PAGE_SIZE, vma.prot if vma else PROT_ALL)
            self._pages.add(page)

    def present(self, addr: int) -> bool:
        return page_floor(addr) in self._pages

    def read(self, addr: int, size: int) -> bytes:
        return self.emu.read(addr, size)

    def write(self, addr: int, data: bytes) -> None:
        self.emu.write(addr, data)

    def symbol_address(self, name: str) -> int:
        """The address of ``name`` (ENOENT if the file has no such symbol)."""
        return self.load_bias + self.image.symbol(name).value

    def copy_from_user(self, addr: int, size: int) -> bytes:
        """Read memory as a handler does; a fault takes the modelled fault path.

        A page not yet present is made present by the system fault handler (after the
        kprobe fault handler of the patch "Kprobes- robust fault handling for i386", if a
        kprobe handler is running). An address that is not mapped at all raises EFAULT.
        """
        out = bytearray()
        pos, end = addr, addr + size
        while pos < end:
            chunk = min(end, page_floor(pos) + PAGE_SIZE) - pos
            if not self.present(pos):
                self._fault_from_handler(pos)
            out += self.emu.read(pos, chunk)
            pos += chunk
        return bytes(out)

    def _fault_from_handler(self, addr: int) -> None:
        valid = self._vma_at(addr) is not None
        k = self.kprobes
        if k is not None and k.in_handler():
            self._kprobe_handler_fault(addr, valid)
        if not self.present(addr):
            if not valid:
                raise ProbeError(errno.EFAULT, f"bad address {addr:#x}")
            self._make_present(addr)
            self.record("fault", addr, detail="page made present")

    def _kprobe_handler_fault(self, addr: int, valid: bool) -> None:
        """The rule of the patch "Kprobes- robust fault handling for i386":
        fault_handler first (nonzero: retry), else nmissed++ and abandon; since v5.14 the
        ordinary fixup only (the row kprobe_fault_handler of kuprobe.model.semantics)."""
        k = self.kprobes
        assert k is not None
        if self.semantics.kprobe_fault_handler == "no":
            # v5.14 on (kuprobe.model.semantics): the ordinary fault path only
            k.handler_fault(self.hooks.PAGE_FAULT_TRAPNR)
            return
        for _ in range(MAX_FAULT_RETRIES):
            if k.handler_fault(self.hooks.PAGE_FAULT_TRAPNR):
                if self.present(addr):
                    return  # the retried access succeeds
                continue  # the retried access faults again
            if valid:  # "let the page fault handler fix this exception"
                self._make_present(addr)
            raise HandlerAbandoned
        raise ModelError(
            f"fault_handler keeps claiming the fault at {addr:#x} but the page never "
            f"becomes present ({MAX_FAULT_RETRIES} retries)"
        )

    # --- registers ---------------------------------------------------------------------------

    def _setup_regs_fast_path(self) -> None:
        """pt_regs field i <- the i-th register the emulator reads (or a constant)."""
        names = self.emu.reg_names
        cls = regs_class(self.arch)
        self._regs_cls = cls
        self._field_src = [
            (names.index(f), 0) if f in names else (-1, self.hooks.reg_defaults.get(f, 0))
            for f in cls.layout.fields
        ]
        self._sp_field = self.hooks.stack_pointer_field()
        # usually the emulator reads the fields in pt_regs order, less the synthetic ones
        in_order = [f for f in cls.layout.fields if f in names] == names
        self._inserts = (
            [(i, d) for i, (src, d) in enumerate(self._field_src) if src < 0] if in_order else None
        )

    def _regs(self) -> PtRegs:
        """A pt_regs snapshot of the CPU; its stack words come when a handler gets it."""
        raw = self.emu.read_regs_list()
        if self._inserts is not None:
            vals = list(raw)
            for i, d in self._inserts:
                vals.insert(i, d)
        else:
            vals = [raw[i] if i >= 0 else d for i, d in self._field_src]
        return model_regs(self._regs_cls, vals)

    def fill_stack(self, regs: PtRegs) -> None:
        """STACK_WORDS words from the stack pointer, before a handler sees ``regs``."""
        if regs.stack:
            return
        sp = int(getattr(regs, self._sp_field))
        w = self.hooks.word
        if self.present(sp) and self.present(sp + STACK_WORDS * w - 1):
            set_stack(regs, self.emu.read_words(sp, STACK_WORDS, w))

    def _write_regs(self, regs: PtRegs, before: Sequence[int] | None = None) -> None:
        fields = regs.layout.fields
        vals = regs.values()
        if before is None:
            self.emu.write_regs(dict(zip(fields, vals, strict=True)))
            return
        if vals == before:  # most traps change two registers; the rest is compared in C
            return
        changed = compress(range(len(vals)), map(ne, vals, before))
        self.emu.write_regs({fields[i]: vals[i] for i in changed})

    # --- trace -------------------------------------------------------------------------------

    def record(
        self, kind: str, addr: int, status: str = "", probe: Any = None, detail: Detail = ""
    ) -> None:
        if self.trace_enabled:
            self.trace.add(kind, addr, status, probe, detail)

    def handler_error(self, probe: Any, exc: BaseException) -> None:
        self.errors.append((probe, exc))
        self.record("handler_error", 0, probe=probe, detail=repr(exc))

    # --- traps -------------------------------------------------------------------------------

    def _on_interrupt(self, intno: int) -> None:
        h = self.hooks
        regs = self._regs()
        before = regs.values()
        kind = h.trap_kind(intno, regs, self)
        if kind == TRAP_BREAKPOINT:
            if self.trace_enabled:
                self.record("breakpoint", int(getattr(regs, h.ip_field())))
            if self.space == "kernel":
                self._kernel_breakpoint(regs)
            else:
                self._user_breakpoint(regs)
        elif kind == TRAP_SINGLESTEP:
            if self.trace_enabled:
                self.record("debug", int(getattr(regs, h.ip_field())))
            if self.space == "kernel":
                k = self.kprobes
                assert k is not None
                if not k.debug_handler(regs):
                    raise ModelError(f"debug trap at {self.emu.pc:#x} with no kprobe stepping")
            else:
                self._user_debug(regs)
        elif self.space == "kernel":
            raise ModelError(f"kernel oops: CPU exception {intno} at {self.emu.pc:#x}")
        else:
            self._send_signal(h.trap_signal(intno), f"CPU exception {intno}")
            self._exit_to_user_mode(regs)
        self._write_regs(regs, before)

    def _kernel_breakpoint(self, regs: PtRegs) -> None:
        k, kr = self.kprobes, self.kretprobes
        assert k is not None and kr is not None
        if k.breakpoint_handler(regs):
            return
        addr = k.m.hooks.kprobe_trap_addr(regs)
        if addr == self.hooks.KRETPROBE_TRAMPOLINE:
            kr.trampoline_handler(regs)
            return
        raise ModelError(f"kernel oops: the breakpoint at {addr:#x} is no kprobe's")

    def _user_breakpoint(self, regs: PtRegs) -> None:
        mm = self.uprobes
        assert mm is not None
        if not mm.handle_swbp(regs):
            self.record(
                "sigtrap", self.hooks.uprobe_get_swbp_addr(regs), detail="breakpoint not ours"
            )
            self._send_signal(signal.SIGTRAP)
        self._exit_to_user_mode(regs)

    def _user_debug(self, regs: PtRegs) -> None:
        mm = self.uprobes
        assert mm is not None
        if mm.post_sstep_notifier():
            mm.handle_singlestep(regs)  # uprobe_notify_resume()
        else:
            self._send_signal(signal.SIGTRAP)
        self._exit_to_user_mode(regs)

    def _on_unmapped(self, access: str, addr: int, size: int) -> bool:
        vma = self._vma_at(addr)
        valid = vma is not None
        k = self.kprobes
        if k is not None and k.kcb.current is not None:
            if k.stepping():
                regs = self._regs()
                before = regs.values()
                k.singlestep_fault(regs)
                if not valid:
                    raise ModelError(f"kernel oops: {access} of {addr:#x} while single-stepping")
                self._make_present(addr)
                raise Restart(regs, before)
            if k.in_handler():
                self._kprobe_handler_fault(addr, valid)
                if self.present(addr):
                    return True
        if valid:
            self._make_present(addr)
            self.record("fault", addr, detail=f"{access}: page made present")
            return True
        if self.space == "kernel":
            what = "left mapped code" if access == "fetch" else f"{access} of unmapped memory"
            raise ModelError(f"kernel oops: {what} at {addr:#x} (pc {self.emu.pc:#x})")
        self.record("fault", addr, detail=f"{access}: SIGSEGV")
        assert self.uprobes is not None
        self.hooks.set_user_fault(self.uprobes.thread)
        what = "left mapped code" if access == "fetch" else f"{access} of unmapped memory"
        self._send_signal(signal.SIGSEGV, f"({what} at {addr:#x})")
        raise _UserFault

    # --- calls -------------------------------------------------------------------------------

    def call(self, func: str | int, *args: int, max_insns: int | None = None) -> int:
        """Call ``func`` with integer ``args`` per the arch's ABI; returns the signed result.

        Inside a handler this runs nested, on the stack below the trapped frame, as a kernel
        handler calls kernel functions. A call that leaves mapped code, or runs more than
        ``max_insns`` instructions, raises ModelError.
        """
        h = self.hooks
        addr = self.symbol_address(func) if isinstance(func, str) else int(func)
        name = func if isinstance(func, str) else f"{addr:#x}"
        bound = max_insns or self.max_insns
        nested = self._depth > 0
        ctx = self.emu.context_save() if nested else None
        if nested:
            sp = h.handler_stack(self.emu.read_reg(h.stack_pointer_field()))
        else:
            sp = h.STACK_TOP - 4 * PAGE_SIZE
        self.emu.write_regs(h.setup_call(self, sp, tuple(args), h.CALL_RETURN))
        self._depth += 1
        # A kernel's uprobe handlers never run user code; here one may (m.call inside a
        # consumer): that nested call gets its own utask, so its probes work and the
        # outer hit's state is untouched.
        outer_utask = None
        if nested and self.uprobes is not None:
            outer_utask = self.uprobes.save_task()
        try:
            if not nested and self.space == "user":
                regs = self._regs()
                self._exit_to_user_mode(regs)
            pc = addr
            while True:
                try:
                    self.emu.run(pc, h.CALL_RETURN, count=bound)
                except Restart as r:
                    self._write_regs(r.regs, r.before)
                    pc = int(getattr(r.regs, h.ip_field()))
                    continue
                except _UserFault:
                    pc = self._after_user_fault()
                    continue
                except EmuError as e:
                    raise ModelError(f"{name}: the CPU stopped at {e.pc:#x}: {e}") from e
                if self.emu.pc == h.CALL_RETURN:
                    break
                raise ModelError(
                    f"{name}: ran past its bound of {bound} instructions (now at "
                    f"{self.emu.pc:#x}); pass max_insns= if it needs more"
                )
            return h.call_result(self.emu.read_regs())
        except BaseException:
            if not nested:
                self._reset_after_abort()
            raise
        finally:
            self._depth -= 1
            if outer_utask is not None and self.uprobes is not None:
                self.uprobes.restore_task(outer_utask)
            if ctx is not None:
                self.emu.context_restore(ctx)

    def _after_user_fault(self) -> int:
        self._fault_repeats += 1
        if self._fault_repeats > MAX_FAULT_RETRIES:
            raise ModelError(f"the fault at {self.emu.pc:#x} repeats after its signal handler")
        regs = self._regs()
        before = regs.values()
        self._exit_to_user_mode(regs)
        self._write_regs(regs, before)
        return int(getattr(regs, self.hooks.ip_field()))

    def _reset_after_abort(self) -> None:
        """A top-level call died: no probe is in flight any more (the task is gone)."""
        self._pending_signals.clear()
        self._fault_repeats = 0
        if self.kprobes is not None:
            k = self.kprobes.kcb
            k.current, k.status, k.instance, k.handler_regs = None, 0, None, None
        if self.kretprobes is not None:
            for f in self.kretprobes.inflight:
                entry = self.kretprobes.entries.get(f.rp) if f.rp else None
                if entry is not None:
                    entry.free.append(f.ri)
            self.kretprobes.inflight.clear()
        if self.uprobes is not None:
            self.uprobes.reset()

    # --- state, for tests and the dashboard ------------------------------------------------

    @property
    def kprobe_status(self) -> str:
        return self.kprobes.status_name() if self.kprobes is not None else "NONE"

    @property
    def utask_state(self) -> str:
        return self.uprobes.utask.state if self.uprobes is not None else "RUNNING"


def _runs(pages: list[int]) -> list[tuple[int, int]]:
    """Consecutive pages as [start, end) runs."""
    runs: list[tuple[int, int]] = []
    for p in pages:
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + PAGE_SIZE)
        else:
            runs.append((p, p + PAGE_SIZE))
    return runs
