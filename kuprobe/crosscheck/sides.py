"""One scenario on each side: the reference model, then the live kernel.

Each side gets fresh probe objects of the scenario's description (an object is registered with
one backend at a time), registers them all, makes the scenario's calls in one process, and
leaves nothing registered behind, whatever fails. Handlers append ``ObservedEvent``s to one
list per side, so the order across probes is compared too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from kuprobe.backend import Backend
from kuprobe.crosscheck.observe import Observation, ObservedEvent
from kuprobe.crosscheck.spec import CallSpec, ScenarioError, ScenarioProbe, ScenarioSpec
from kuprobe.crosscheck.target import WaitingTarget
from kuprobe.elf import ElfImage
from kuprobe.errors import ProbeError
from kuprobe.insn import boundaries, disassembler
from kuprobe.probes import Uprobe, UprobeConsumer
from kuprobe.regs import PtRegs, regs_return_value, signed, user_argument
from kuprobe.task import Task


def user_arg(regs: PtRegs, n: int) -> int:
    """Argument ``n`` (0-based) of a user function at its entry, signed, per the user ABI."""
    return signed(user_argument(regs, n), regs.info.bits)


def word(regs: PtRegs, value: int) -> int:
    """A register's raw value, signed at the arch's word size."""
    return signed(value, regs.info.bits)


def instruction_offsets(exe: Path, func: str) -> list[int]:
    """Offset from ``func``'s start of each of its instructions, decoded from the start."""
    with ElfImage(str(exe)) as elf:
        sym = elf.symbol(func)
        return [o for o, _ in boundaries(elf.arch, elf.read_vaddr(sym.value, sym.size))]


def probe_offsets(exe: Path, p: ScenarioProbe) -> list[int]:
    """Where ``p``'s probes go in ``exe``: offsets from the start of ``p.symbol``."""
    if p.every_insn:
        return instruction_offsets(exe, p.symbol)
    with ElfImage(str(exe)) as elf:
        sym = elf.symbol(p.symbol)
        if p.at is not None:
            return [elf.symbol(p.at).value - sym.value]
        if p.insn is None:
            return [p.offset]
        code = elf.read_vaddr(sym.value, sym.size)
        found = [
            i.address - sym.value
            for i in disassembler(elf.arch).disasm(code, sym.value)
            if i.mnemonic == p.insn
        ]
    if len(found) <= p.nth:
        raise ScenarioError(
            f"{exe}: {p.symbol} has {len(found)} {p.insn!r} instructions, no number {p.nth}"
        )
    return [found[p.nth]]


P = TypeVar("P")


@dataclass
class ProbeSet(Generic[P]):
    """One side's probes of a scenario, each named as the observation names it, and the
    events their handlers saw. A subclass says where a ``ScenarioProbe`` probes (``offsets``)
    and makes its probe at one offset (``_probe``): uprobes here, kprobes in _kprobes.py."""

    spec: ScenarioSpec
    events: list[ObservedEvent] = field(default_factory=list, kw_only=True)
    probes: list[tuple[str, ScenarioProbe, P]] = field(default_factory=list, kw_only=True)
    refused: dict[str, int] = field(default_factory=dict, kw_only=True)  # name -> the errno

    def __post_init__(self) -> None:
        for p in self.spec.probes:
            for off in self.offsets(p):  # ``consumers`` probes at each; every_insn: named by it
                for k in range(p.consumers):
                    name = f"{p.symbol}+{off:#x}" if p.every_insn else p.name
                    if p.consumers > 1:
                        name += f" #{k + 1}"
                    self.probes.append((name, p, self._probe(name, p, off)))

    def offsets(self, p: ScenarioProbe) -> list[int]:
        raise NotImplementedError

    def _probe(self, name: str, p: ScenarioProbe, offset: int) -> P:
        raise NotImplementedError

    def register_each(
        self,
        probes: Sequence[tuple[str, ScenarioProbe, P]],
        register: Callable[[P], None],
        registered: list[P],
    ) -> None:
        """Register each of ``probes``, appending it to ``registered``; the ones refused are
        noted in ``refused`` (a refusal is a fact to compare: the kernel's verdict on an
        instruction)."""
        for name, _, probe in probes:
            try:
                register(probe)
            except ProbeError as e:
                self.refused[name] = e.errno or 0
            else:
                registered.append(probe)


@dataclass
class Side(ProbeSet[Uprobe]):
    """A scenario's uprobes on its program ``exe``."""

    exe: Path

    def offsets(self, p: ScenarioProbe) -> list[int]:
        return probe_offsets(self.exe, p)

    def _probe(self, name: str, p: ScenarioProbe, offset: int) -> Uprobe:
        events = self.events

        def entry(_uc: UprobeConsumer, regs: PtRegs) -> int:
            values = tuple(user_arg(regs, i) for i in range(p.args))
            values += tuple(word(regs, int(getattr(regs, r))) for r in p.registers)
            events.append(ObservedEvent(name, values))
            return 0

        def ret(_uc: UprobeConsumer, _func: int, regs: PtRegs) -> int:
            events.append(ObservedEvent(f"{name} return", (word(regs, regs_return_value(regs)),)))
            return 0

        def accept(_uc: UprobeConsumer, _task: Task) -> bool:
            return True

        def reject(_uc: UprobeConsumer, _task: Task) -> bool:
            return False

        entry_handler = entry if p.args or p.registers or p.filter else None
        consumer = None
        if entry_handler or p.ret or p.filter:  # else count-only: the kernel counts the hits
            consumer = UprobeConsumer(
                handler=entry_handler,
                ret_handler=ret if p.ret else None,
                filter={"accept": accept, "reject": reject}.get(p.filter or ""),
            )
        return Uprobe(str(self.exe), symbol_name=p.symbol, offset=offset, consumer=consumer)

    def set_pids(self, target: int, other: int) -> None:
        for _, p, up in self.probes:
            up.pid = target if p.pid == "target" else other

    def register(self, backend: Backend, registered: list[Uprobe]) -> None:
        """Register every probe on ``backend``, appending each to ``registered``; the ones it
        refuses are noted in ``refused`` (a refusal is a fact to compare: the kernel's verdict
        on an instruction)."""
        self.register_each(self.probes, backend.register_uprobe, registered)

    def observe(self, results: Sequence[int]) -> Observation:
        obs: Observation = {}
        compare = self.spec.compare
        if "results" in compare:
            for i, (call, r) in enumerate(zip(self.spec.calls, results, strict=True)):
                obs[f"call {i + 1}: {call.label}"] = r
        for name, p, up in self.probes:
            if name in self.refused:
                obs[f"{name} refused (errno)"] = self.refused[name]
            elif "hits" in compare:
                obs[f"{name} hits"] = up.hits
                if p.ret:
                    obs[f"{name} return hits"] = up.ret_hits
        recording = [name for name, p, _ in self.probes if p.records or p.filter]
        if "events" in compare and recording:
            obs["handler events, in order"] = tuple(self.events)
        if "events-by-probe" in compare:
            for name in recording:
                mine = (name, f"{name} return")
                obs[f"{name} events"] = tuple(e for e in self.events if e.kind in mine)
        return obs


def run_model(exe: Path, spec: ScenarioSpec, *, semantics: Any = "today") -> Observation:
    """The scenario on a Machine of ``exe``: every probe registered, then every call.
    ``semantics``: the Machine's (those of the live kernel compared against)."""
    from kuprobe.model import Machine

    side = Side(spec, exe)
    # strict: a handler that raises is a bug here: fail
    machine = Machine.load(str(exe), strict=True, semantics=semantics)
    side.set_pids(machine.task.tgid, machine.task.tgid + 1)
    registered: list[Uprobe] = []
    try:
        side.register(machine, registered)
        results = [machine.call(c.func, *c.args) for c in spec.calls]
    finally:
        # Model uprobes are global to their file, as in the kernel: leave none behind.
        for up in registered:
            machine.unregister_uprobe(up)
    return side.observe(results)


def run_live(exe: Path, spec: ScenarioSpec, backend: Backend | None = None) -> Observation:
    """The scenario in one ``PROGRAM wait CALL…`` process, its probes limited to that pid (or,
    ``pid = "other"``, to this process, which does not run ``exe``), on ``backend`` (this
    process's live backend by default). Observed once every probe is unregistered, so every
    event is handled and the counters are final."""
    if backend is None:
        from kuprobe.live.api import backend as live_backend

        backend = live_backend()
    side = Side(spec, exe)
    calls: Sequence[CallSpec] = spec.calls
    with WaitingTarget(exe, [c.argv for c in calls]) as target:
        side.set_pids(target.pid, os.getpid())
        registered: list[Uprobe] = []
        try:
            side.register(backend, registered)
            results = target.go()
        finally:
            backend.unregister_uprobes(registered)
    return side.observe(results)
