"""The scenarios: the same probes and calls on the reference model and on the live kernel.

Each scenario observes one thing both ways and normalises it into an ``Observation`` (named
facts: counts, sums of results, ordered handler events) that compares with ``==``: no
addresses (the model maps a PIE where the kernel's ASLR does not), values signed at the arch's
word size. ``diff`` lists where the two disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kuprobe.crosscheck._sides import Job, run_live, run_model, user_arg, word
from kuprobe.crosscheck._target import target_path
from kuprobe.elf import ElfImage
from kuprobe.insn import boundaries
from kuprobe.probes import Uprobe, UprobeConsumer
from kuprobe.regs import PtRegs, regs_return_value


@dataclass(frozen=True)
class Event:
    """One handler call: ``kind`` (entry, return, or the probed label) and what it read."""

    kind: str
    values: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(map(str, self.values))})"


Value = int | tuple[Event, ...]
Observation = dict[str, Value]  # fact -> value, in the order a reader should see them


@dataclass(frozen=True)
class Difference:
    """One fact on which the model and the kernel disagree (None: that side lacks it)."""

    fact: str
    model: Value | None
    live: Value | None
    why: str


def diff(model: Observation, live: Observation) -> list[Difference]:
    """Every fact whose value differs, in the model's order, then facts only the kernel has."""
    out = []
    for fact in [*model, *(f for f in live if f not in model)]:
        m, k = model.get(fact), live.get(fact)
        if m == k:
            continue
        if m is None or k is None:
            why = f"only the {'kernel' if m is None else 'model'} observed it"
        elif isinstance(m, tuple) and isinstance(k, tuple):
            why = _first_difference(m, k)
        else:
            why = f"model {m}, kernel {k}"
        out.append(Difference(fact, m, k, why))
    return out


def _first_difference(model: tuple[Event, ...], live: tuple[Event, ...]) -> str:
    i = next((i for i, (m, k) in enumerate(zip(model, live, strict=False)) if m != k), None)
    if i is None:
        i = min(len(model), len(live))
    m = str(model[i]) if i < len(model) else "nothing"
    k = str(live[i]) if i < len(live) else "nothing"
    return (
        f"event {i + 1}: model {m}, kernel {k} "
        f"({len(model)} events in the model, {len(live)} from the kernel)"
    )


Observe = Callable[[Path], tuple[Observation, Observation]]


@dataclass(frozen=True)
class Scenario:
    """A name, what it checks, and ``observe(exe) -> (model, live)`` on one target file."""

    name: str
    description: str
    observe: Observe

    def run(self, arch: str) -> Result:
        """Build the ARCH target if needed, observe both ways, and compare."""
        model, live = self.observe(target_path(arch))
        return Result(self, arch, model, live)


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    arch: str
    model: Observation
    live: Observation

    @property
    def differences(self) -> list[Difference]:
        return diff(self.model, self.live)

    @property
    def agree(self) -> bool:
        return not self.differences


# --- every-insn ------------------------------------------------------------------------------

EVERY_INSN_FUNCS = ("calls", "sw", "loop_sum")
EVERY_INSN_JOB = (6, 3)  # each function called 6 times: f(3) .. f(8)


def instruction_offsets(exe: Path, func: str) -> list[int]:
    """Offset from ``func``'s start of each of its instructions, decoded from the start."""
    with ElfImage(str(exe)) as elf:
        sym = elf.symbol(func)
        return [o for o, _ in boundaries(elf.arch, elf.read_vaddr(sym.value, sym.size))]


def every_insn(exe: Path) -> tuple[Observation, Observation]:
    """A count-only uprobe on every instruction: how often each one was hit."""
    n, arg = EVERY_INSN_JOB
    jobs = [Job(f, n, arg) for f in EVERY_INSN_FUNCS]
    offsets = {j: instruction_offsets(exe, j.func) for j in jobs}

    def probes(job: Job) -> list[Uprobe]:
        return [Uprobe(str(exe), symbol_name=job.func, offset=o) for o in offsets[job]]

    def observe(results: Sequence[int], sets: Sequence[list[Uprobe]]) -> Observation:
        obs: Observation = {}
        for job, result, ups in zip(jobs, results, sets, strict=True):
            obs[f"{job.label}: sum of results"] = result
            for off, p in zip(offsets[job], ups, strict=True):
                obs[f"{job.func}+{off:#x} hits"] = p.hits
        return obs

    # One function's probes at a time on the model: calls() calls sw() and loop_sum(), whose
    # probes the kernel only counts in their own processes (each live set has its pid).
    model_sets = [probes(j) for j in jobs]
    model_results = [run_model(exe, s, [j])[0] for j, s in zip(jobs, model_sets, strict=True)]
    model = observe(model_results, model_sets)
    live_sets = [probes(j) for j in jobs]
    live = observe(run_live(exe, list(zip(jobs, live_sets, strict=True))), live_sets)
    return model, live


# --- entry and return events -----------------------------------------------------------------


class _Recorder:
    """A uprobe (and uretprobe) whose handlers append ``Event``s, for one side."""

    def __init__(
        self, exe: Path, func: str, *, offset: int = 0, label: str = "entry", nargs: int = 0,
        register: str | None = None, ret: bool = False,
    ) -> None:  # fmt: skip
        """A probe on ``func`` + ``offset`` of ``exe``. Each hit records ``Event(label, …)``
        with ``nargs`` entry arguments, or the value of ``register``; with ``ret``, each return
        (uretprobe) records ``Event("return", (value,))``."""
        self.events: list[Event] = []
        self.kind = label
        self.nargs = nargs
        self.register = register
        consumer = UprobeConsumer(handler=self._entry, ret_handler=self._return if ret else None)
        self.probe = Uprobe(str(exe), symbol_name=func, offset=offset, consumer=consumer)

    def _entry(self, _uc: UprobeConsumer, regs: PtRegs) -> int:
        values: tuple[int, ...]
        if self.register is not None:
            values = (word(regs, int(getattr(regs, self.register))),)
        else:
            values = tuple(user_arg(regs, i) for i in range(self.nargs))
        self.events.append(Event(self.kind, values))
        return 0

    def _return(self, _uc: UprobeConsumer, _func: int, regs: PtRegs) -> int:
        self.events.append(Event("return", (word(regs, regs_return_value(regs)),)))
        return 0

    def observe(self, job: Job, result: int) -> Observation:
        obs: Observation = {f"{job.label}: sum of results": result, "hits": self.probe.hits}
        if self.probe.consumer is not None and self.probe.consumer.ret_handler is not None:
            obs["return hits"] = self.probe.ret_hits
        obs["handler events, in order"] = tuple(self.events)
        return obs


def _both(exe: Path, job: Job, make: Callable[[], _Recorder]) -> tuple[Observation, Observation]:
    model = make()
    (result,) = run_model(exe, [model.probe], [job])
    live = make()
    (live_result,) = run_live(exe, [(job, [live.probe])])
    return model.observe(job, result), live.observe(job, live_result)


def uretprobe_depth(exe: Path) -> tuple[Observation, Observation]:
    """rec(100) under a uretprobe: every entry, and the returns the kernel hijacked."""
    return _both(exe, Job("rec", 1, 100), lambda: _Recorder(exe, "rec", nargs=1, ret=True))


def args(exe: Path) -> tuple[Observation, Observation]:
    """add(a, 2a): both arguments at entry (the arch's user ABI) and the return value."""
    return _both(exe, Job("add", 6, -2), lambda: _Recorder(exe, "add", nargs=2, ret=True))


MID_REGISTER = {"x86_64": "ax", "i386": "ax"}  # the "+a" operand at mid_label (funcs.c)


def mid_function(exe: Path) -> tuple[Observation, Observation]:
    """A uprobe at mid_label inside midpoint(x): the accumulator there holds 3x + 7."""
    with ElfImage(str(exe)) as elf:
        offset = elf.symbol("mid_label").value - elf.symbol("midpoint").value
        register = MID_REGISTER[elf.arch]

    def make() -> _Recorder:
        return _Recorder(exe, "midpoint", offset=offset, label="mid_label", register=register)

    return _both(exe, Job("midpoint", 6, -2), make)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "every-insn",
            "a count-only uprobe on every instruction of calls, sw and loop_sum: "
            "hits per instruction",
            every_insn,
        ),
        Scenario(
            "uretprobe-depth",
            "rec(100) under a uretprobe: 101 entries, returns only for the outermost "
            "MAX_URETPROBE_DEPTH (64) calls",
            uretprobe_depth,
        ),
        Scenario(
            "args",
            "add(a, 2a) for a = -2..3: entry arguments per the arch's ABI, return values",
            args,
        ),
        Scenario(
            "mid-function",
            "a uprobe at mid_label inside midpoint(x): the accumulator (3x + 7) there",
            mid_function,
        ),
    )
}
