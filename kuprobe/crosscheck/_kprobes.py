"""A kprobe scenario on each side: the model, then the live kernel, on the test module.

The model runs the test module's code as kernel text, then the live kernel (the x86_64 guest,
the module loaded) runs the module itself.

Both sides get fresh ``Kprobe`` / ``Kretprobe`` objects of the scenario's description, register
them all (or, ``one_at_a_time``, each alone), make the scenario's calls (and its
disable/enable steps), and leave nothing registered. Handlers append ``ObservedEvent``s to one
list per side. The probes' places are decoded from the bytes the kernel runs
(``_kmod.running_image``), which is also what the model executes, so both sides probe the same
instructions.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

from kuprobe.arch import X86_64
from kuprobe.backend import Backend
from kuprobe.crosscheck import _kmod
from kuprobe.crosscheck.acceptance import Verdict, instructions
from kuprobe.crosscheck.observe import Observation, ObservedEvent
from kuprobe.crosscheck.sides import ProbeSet
from kuprobe.crosscheck.spec import ScenarioError, ScenarioProbe, ScenarioSpec
from kuprobe.errors import ProbeError
from kuprobe.insn import boundaries, disassembler
from kuprobe.probes import Kprobe, Kretprobe, KretprobeInstance
from kuprobe.regs import PtRegs, regs_get_kernel_argument, regs_return_value, signed
from kuprobe.targets.kmod import INSN_OFFSET, INSN_SYMBOL, MODULE

ARCH = X86_64.name
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")
# A kretprobe's per-call data: argument 0 as a signed 64-bit word
DATA_BYTES = 8


def kprobes_here() -> bool:
    """Whether this kernel has kprobes (the kprobe PMU perf events are made on)."""
    return KPROBE_PMU.is_dir()


def require_kprobes(spec: ScenarioSpec) -> None:
    if not kprobes_here():
        raise ScenarioError(
            f"{spec.name} needs kprobes, which this kernel does not have: it runs in the "
            "x86_64 guest (`kuprobe vm test --arch x86_64 tests/vm/test_crosscheck_kprobes.py`)"
        )


@dataclass(frozen=True)
class KmodTarget:
    """The loaded module's running image, and that image as an ELF file for the model."""

    image: _kmod.ModuleImage
    elf: Path

    def offsets(self, p: ScenarioProbe) -> list[int]:
        """Where ``p``'s probes go: offsets from the start of ``p.symbol``, decoded from the
        running bytes."""
        try:
            addr, code = self.image.function(p.symbol)
        except KeyError:
            raise ScenarioError(f"{MODULE} has no function {p.symbol!r}") from None
        if p.every_insn:
            return [o for o, _ in boundaries(ARCH, code)]
        if p.at is not None:
            if p.at not in self.image.symbols:
                raise ScenarioError(f"{MODULE} has no label {p.at!r}")
            return [self.image.symbols[p.at][0] - addr]
        if p.insn is None:
            return [p.offset]
        found = [
            i.address - addr for i in disassembler(ARCH).disasm(code, addr) if i.mnemonic == p.insn
        ]
        if len(found) <= p.nth:
            raise ScenarioError(f"{p.symbol} has {len(found)} {p.insn!r}, no number {p.nth}")
        return [found[p.nth]]


@cache
def kmod_target() -> KmodTarget:
    """The module, loaded (insmod) if it is not, read back once per process."""
    _kmod.ensure_loaded()
    image = _kmod.running_image()
    folder = Path(tempfile.mkdtemp(prefix="kuprobe-kmod-"))
    elf = folder / f"{MODULE}.elf"
    image.write_elf(elf)
    return KmodTarget(image, elf)


class _Probes(Protocol):
    def register_kprobe(self, p: Kprobe) -> None: ...
    def register_kretprobe(self, rp: Kretprobe) -> None: ...
    def unregister_kprobes(self, kps: Sequence[Kprobe]) -> None: ...
    def unregister_kretprobes(self, rps: Sequence[Kretprobe]) -> None: ...
    def enable_kprobe(self, p: Kprobe) -> None: ...
    def disable_kprobe(self, p: Kprobe) -> None: ...


AnyKprobe = Kprobe | Kretprobe


@dataclass
class KSide(ProbeSet[AnyKprobe]):
    """A scenario's kprobes and kretprobes on the test module's functions."""

    target: KmodTarget

    def offsets(self, p: ScenarioProbe) -> list[int]:
        return self.target.offsets(p)

    def _probe(self, name: str, p: ScenarioProbe, offset: int) -> AnyKprobe:
        events = self.events

        def read(regs: PtRegs) -> tuple[int, ...]:
            values = tuple(signed(regs_get_kernel_argument(regs, i)) for i in range(p.args))
            return values + tuple(signed(int(getattr(regs, r))) for r in p.registers)

        if p.kind == "kprobe":

            def pre(_p: Kprobe, regs: PtRegs) -> int:
                events.append(ObservedEvent(name, read(regs)))
                return 0

            return Kprobe(
                symbol_name=p.symbol, offset=offset, pre_handler=pre if p.records else None
            )

        def entry(ri: KretprobeInstance, regs: PtRegs) -> int:
            if p.args:
                events.append(ObservedEvent(f"{name} entry", read(regs)))
            if p.data_size:
                arg0 = regs_get_kernel_argument(regs, 0)
                ri.data[:DATA_BYTES] = arg0.to_bytes(DATA_BYTES, "little")
            return 0

        def ret(ri: KretprobeInstance, regs: PtRegs) -> int:
            values: tuple[int, ...] = (signed(regs_return_value(regs)),)
            if p.data_size:
                values += (signed(int.from_bytes(ri.data[:DATA_BYTES], "little")),)
            events.append(ObservedEvent(f"{name} return", values))
            return 0

        return Kretprobe(
            symbol_name=p.symbol,
            handler=ret if p.ret or p.data_size else None,
            entry_handler=entry if p.args or p.data_size else None,
            maxactive=p.maxactive,
            data_size=p.data_size,
        )

    def register(self, backend: _Probes, probes: Sequence[tuple[str, ScenarioProbe, AnyKprobe]],
                 registered: list[AnyKprobe]) -> None:  # fmt: skip
        """Register ``probes`` on ``backend``; refusals are noted (a fact to compare)."""

        def register(kp: AnyKprobe) -> None:
            if isinstance(kp, Kprobe):
                backend.register_kprobe(kp)
            else:
                backend.register_kretprobe(kp)

        self.register_each(probes, register, registered)

    def run(self, backend: _Probes, call: Callable[..., int]) -> list[int]:
        """Every probe registered (``one_at_a_time`` ones each alone, the calls made once per
        probe), the calls made; the results of the first round."""
        alone = [t for t in self.probes if t[1].one_at_a_time]
        together = [t for t in self.probes if not t[1].one_at_a_time]
        rounds = [[*together, t] for t in alone] or [together]
        results: list[int] = []
        for i, probes in enumerate(rounds):
            registered: list[AnyKprobe] = []
            try:
                self.register(backend, probes, registered)
                out = self._calls(backend, call, registered)
            finally:
                kps = [kp for kp in registered if isinstance(kp, Kprobe)]
                backend.unregister_kprobes(kps)
                backend.unregister_kretprobes(
                    [kp for kp in registered if not isinstance(kp, Kprobe)]
                )
            results = out if i == 0 else results
        return results

    def _calls(self, backend: _Probes, call: Callable[..., int],
               registered: list[AnyKprobe]) -> list[int]:  # fmt: skip
        results = []
        for c in self.spec.calls:
            if c.action:
                for name, _, kp in self.probes:
                    if (
                        isinstance(kp, Kprobe)
                        and kp in registered
                        and name.split(" #")[0] == c.func
                    ):
                        (
                            backend.disable_kprobe
                            if c.action == "disable"
                            else backend.enable_kprobe
                        )(kp)
                continue
            results.append(call(c.func, *c.args))
        return results

    def observe(self, results: Sequence[int]) -> Observation:
        obs: Observation = {}
        compare = self.spec.compare
        calls = [c for c in self.spec.calls if not c.action]
        if "results" in compare:
            for i, (c, r) in enumerate(zip(calls, results, strict=True)):
                obs[f"call {i + 1}: {c.label}"] = r
        for name, _p, kp in self.probes:
            if name in self.refused:
                obs[f"{name} refused (errno)"] = self.refused[name]
            elif "hits" in compare:
                obs[f"{name} hits"] = kp.hits
                obs[f"{name} nmissed"] = kp.nmissed
        recording = [name for name, p, _ in self.probes if p.records]
        if "events" in compare and recording:
            obs["handler events, in order"] = tuple(self.events)
        if "events-by-probe" in compare:
            for name in recording:
                mine = (name, f"{name} entry", f"{name} return")
                obs[f"{name} events"] = tuple(e for e in self.events if e.kind in mine)
        return obs


def run_kmodel(spec: ScenarioSpec, target: KmodTarget | None = None) -> Observation:
    """The scenario on a Machine of the module's running image (kernel space, with the rules
    of the running kernel's release: kuprobe.model.semantics)."""
    from kuprobe.model import Machine

    target = target or kmod_target()
    machine = Machine.load(target.elf, space="kernel", strict=True, semantics=os.uname().release)
    side = KSide(spec, target)
    results = side.run(machine, machine.call)
    return side.observe(results)


def run_klive(spec: ScenarioSpec, backend: Backend | None = None,
              target: KmodTarget | None = None) -> Observation:  # fmt: skip
    """The scenario on the live kernel: the module's functions called through its /proc file
    from this process. Observed once every probe is unregistered (counters final)."""
    require_kprobes(spec)
    if backend is None:
        from kuprobe.live.api import backend as live_backend

        backend = live_backend()
    target = target or kmod_target()
    side = KSide(spec, target)
    results = side.run(backend, _kmod.call)
    return side.observe(results)


def observe_kspec(spec: ScenarioSpec, arch: str) -> tuple[Observation, Observation]:
    """``spec`` on the model, then on the live kernel (the module loaded here)."""
    require_kprobes(spec)
    if arch != ARCH:
        raise ScenarioError(f"{spec.name}: the test module runs on {ARCH}, not {arch}")
    return run_kmodel(spec), run_klive(spec)


# --- instruction acceptance (kk_insns.S) ----------------------------------------------------

TRACEFS_EVENTS = Path("/sys/kernel/tracing/kprobe_events")
ORACLE = "kuprobe_oracle/probe"


def tracefs_errno(target: str) -> int:
    """register_kprobe()'s verdict on ``target`` (``sym+off``) through a tracefs kprobe event,
    which registers a real kprobe (kernel/trace/trace_kprobe.c): 0 or the errno."""
    fd = os.open(TRACEFS_EVENTS, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"p:{ORACLE} {target}\n".encode())
    except OSError as e:
        return e.errno or errno.EIO
    else:
        os.write(fd, f"-:{ORACLE}\n".encode())
        return 0
    finally:
        os.close(fd)


def kprobe_acceptance(target: KmodTarget | None = None) -> list[Verdict]:
    """Each encoding of ``acceptance.instructions()`` in the module (``kk_insn_N+5``): the
    model's register_kprobe() verdict and the live kernel's, one probe at a time."""
    from kuprobe.model import Machine

    target = target or kmod_target()
    machine = Machine.load(target.elf, space="kernel", trace=False, semantics=os.uname().release)
    verdicts = []
    for i, (code, text) in enumerate(instructions(ARCH)):
        name = INSN_SYMBOL.format(i)
        addr, _ = target.image.symbols[name]
        running = target.image.read(addr + INSN_OFFSET, len(code))
        if running != code:
            raise ScenarioError(f"{name}: the module runs {running.hex()}, not {code.hex()}")
        kp = Kprobe(symbol_name=name, offset=INSN_OFFSET)
        try:
            machine.register_kprobe(kp)
        except ProbeError as e:
            model = e.errno or -1
        else:
            machine.unregister_kprobe(kp)
            model = 0
        live = tracefs_errno(f"{name}+{INSN_OFFSET}")
        verdicts.append(Verdict(code, text, model, live))
    return verdicts
