"""Where each scenario runs, and one run's outcome as a record and as JSON.

A scenario's live side runs on one of two sides: ``host`` (this machine's kernel: uprobes for
the programs it runs, x86_64 and i386 on an x86_64 host) or ``vm`` (a qemu guest of the
program's arch, ``kuprobe.vm``: x86_64 and arm64). ``plan()`` lists, for the scenarios, arches
and sides asked for, every (scenario, side, arch) the scenario names, each either to run or with
the reason that side cannot run it; nothing asked for is dropped without a word. The
README's agreement table is rendered from the same plan (``markdown_table``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kuprobe.arch import ARM64, I386, X86_64, host_arch
from kuprobe.crosscheck._kprobes import kprobes_here
from kuprobe.crosscheck.observe import Observation, ObservedEvent, ObservedValue, diff
from kuprobe.crosscheck.scenarios import Result, Scenario
from kuprobe.crosscheck.spec import NEEDS_KPROBES
from kuprobe.vm.guests import GUESTS

SIDES = ("host", "vm")
# The guests (kuprobe.vm.guests), by the program arch each runs. The x86_64 guest's root has
# no 32-bit C library, so i386 programs (dynamically linked) run on the host only.
GUEST_ARCHES: tuple[str, ...] = tuple(GUESTS)
_HOST = host_arch()
HOST_ARCHES: tuple[str, ...] = _HOST.runs if _HOST is not None else ()


@dataclass(frozen=True)
class Planned:
    """One (scenario, side, arch): to run (``reason`` None) or why that side cannot."""

    scenario: str
    side: str
    arch: str
    reason: str | None = None

    @property
    def runs(self) -> bool:
        return self.reason is None


NO_KPROBES = "this host's kernel has no kprobes (no kprobe PMU)"


def why_not(
    scenario: Scenario,
    side: str,
    arch: str,
    *,
    host_arches: Sequence[str] = HOST_ARCHES,
    kprobes: bool | None = None,
) -> str | None:
    """Why ``side`` cannot run the scenario's ARCH program, or None when it can.
    ``host_arches``: the programs this host runs; ``kprobes``: whether its kernel has them."""
    needs_kprobes = scenario.needs == NEEDS_KPROBES
    if side == "host":
        if arch not in host_arches:
            return f"this host runs {' and '.join(host_arches) or 'no'} programs only"
        if needs_kprobes and not (kprobes_here() if kprobes is None else kprobes):
            return NO_KPROBES
        return None
    if arch not in GUEST_ARCHES:
        return f"no guest runs {arch} programs (the x86_64 guest has no 32-bit C library)"
    if needs_kprobes and arch != X86_64.name:
        return "kprobe scenarios run in the x86_64 guest (the test module is built for its kernel)"
    return None


def plan(
    scenarios: Iterable[Scenario],
    arches: Sequence[str],
    sides: Sequence[str],
    *,
    host_arches: Sequence[str] = HOST_ARCHES,
    kprobes: bool | None = None,
) -> list[Planned]:
    """Every (scenario, side, arch) asked for that the scenario names, side by side."""
    out = []
    for s in scenarios:
        for side in sides:
            for arch in (a for a in s.arches if a in arches):
                reason = why_not(s, side, arch, host_arches=host_arches, kprobes=kprobes)
                out.append(Planned(s.name, side, arch, reason))
    return out


@dataclass(frozen=True)
class Run:
    """One scenario on one side and arch: its result, or why there is none."""

    planned: Planned
    kernel: str = ""  # the live kernel's release (uname -r)
    semantics: str = ""  # the model's semantics, as the Machine was given them
    result: Result | None = None
    error: str | None = None  # a side that should have run it could not

    @property
    def agree(self) -> bool | None:
        return None if self.result is None else self.result.agree


# --- JSON ---------------------------------------------------------------------------------


def encode_value(value: ObservedValue) -> Any:
    """An int, or a list of ``{"kind": ..., "values": [...]}`` events."""
    if isinstance(value, int):
        return value
    return [{"kind": e.kind, "values": list(e.values)} for e in value]


def decode_value(data: Any) -> ObservedValue:
    if isinstance(data, int):
        return data
    return tuple(ObservedEvent(str(e["kind"]), tuple(int(v) for v in e["values"])) for e in data)


def encode_observation(obs: Observation) -> dict[str, Any]:
    return {fact: encode_value(v) for fact, v in obs.items()}


def decode_observation(data: dict[str, Any]) -> Observation:
    return {str(fact): decode_value(v) for fact, v in data.items()}


def run_json(run: Run) -> dict[str, Any]:
    """What ``kuprobe crosscheck --json`` prints for one run (one line each)."""
    p = run.planned
    out: dict[str, Any] = {"scenario": p.scenario, "arch": p.arch, "side": p.side}
    if not p.runs or run.error is not None:
        out |= {"ran": False, "agree": None, "reason": p.reason or run.error}
        return out
    assert run.result is not None
    r = run.result
    out |= {
        "ran": True,
        "kernel": run.kernel,
        "semantics": run.semantics,
        "agree": r.agree,
        "differences": [
            {
                "fact": d.fact,
                "model": None if d.model is None else encode_value(d.model),
                "live": None if d.live is None else encode_value(d.live),
                "why": d.why,
            }
            for d in diff(r.model, r.live)
        ],
        "model": encode_observation(r.model),
        "live": encode_observation(r.live),
    }
    return out


# --- the README's table ---------------------------------------------------------------------

COLUMNS = (("host", X86_64.name), ("host", I386.name), ("vm", X86_64.name), ("vm", ARM64.name))
_SHORT = {NO_KPROBES: "no kprobes"}


def markdown_table(scenarios: Sequence[Scenario]) -> str:
    """Scenario by side and arch for an x86_64 host without kprobes (this project's machines and
    CI): ``agree`` where the scenario runs (every one must, and the suite checks it:
    tests/live/test_crosscheck.py on the host, tests/vm/test_crosscheck_guest.py in each
    guest), ``-`` where the scenario names no such arch, else why that side cannot."""
    arches = [a for _, a in COLUMNS]
    planned = {
        (p.scenario, p.side, p.arch): p
        for p in plan(scenarios, arches, SIDES, host_arches=X86_64.runs, kprobes=False)
    }
    head = ["Scenario", *(f"{side} {arch}" for side, arch in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in scenarios:
        cells = [f"`{s.name}`"]
        for side, arch in COLUMNS:
            p = planned.get((s.name, side, arch))
            if p is None:
                cells.append("-")
            elif p.runs:
                cells.append("agree")
            else:
                assert p.reason is not None
                cells.append(_SHORT.get(p.reason, "not run"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
