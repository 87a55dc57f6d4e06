"""The scenarios: the TOML files of the corpus, read once, by name.

They live in kuprobe/crosscheck/corpus/ (package data; tests/scenarios/ in a checkout), are
read by ``kuprobe.crosscheck.spec``, and each runs on the reference model and on the live
kernel with the same probes and calls.

``SCENARIOS`` maps each name (the file's stem) to a ``Scenario``; ``Scenario.run(arch)``
observes both sides on that arch's build of the scenario's program and returns a ``Result``
(``model``, ``live``, ``differences``, ``agree``). ``$KUPROBE_SCENARIOS`` names another folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from kuprobe.crosscheck._kprobes import observe_kspec
from kuprobe.crosscheck.observe import Difference, Observation, ObservedEvent, ObservedValue, diff
from kuprobe.crosscheck.sides import instruction_offsets, run_live, run_model
from kuprobe.crosscheck.spec import DEFAULT_ARCHES, ScenarioSpec, load_dir
from kuprobe.crosscheck.target import target_path

__all__ = [
    "SCENARIOS",
    "SCENARIO_DIR",
    "Difference",
    "Observation",
    "ObservedEvent",
    "ObservedValue",
    "Result",
    "Scenario",
    "diff",
    "instruction_offsets",
]

# The corpus shipped with the package (package data; in a checkout, a link to tests/scenarios)
SCENARIO_DIR = Path(os.environ.get("KUPROBE_SCENARIOS") or Path(__file__).parent / "corpus")

Observe = Callable[[str], tuple[Observation, Observation]]


@dataclass(frozen=True)
class Scenario:
    """A name, what it checks, and ``observe(arch) -> (model, live)``."""

    name: str
    description: str
    observe: Observe
    arches: tuple[str, ...] = DEFAULT_ARCHES
    spec: ScenarioSpec | None = field(default=None, compare=False)

    @property
    def needs(self) -> str:
        """What its live side needs beyond this host's uprobes: "" or "kprobes" (then it runs
        in the x86_64 guest, on the test module: ``spec.side`` is "vm")."""
        return self.spec.needs if self.spec is not None else ""

    def run(self, arch: str) -> Result:
        """Build the ARCH program if needed, observe both ways, and compare."""
        model, live = self.observe(arch)
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


def observe_spec(spec: ScenarioSpec, arch: str) -> tuple[Observation, Observation]:
    """``spec`` on the model, with the rules of this kernel's release, then on this live
    kernel, on ARCH's build of its program."""
    exe = target_path(arch, spec.program)
    return run_model(exe, spec, semantics=os.uname().release), run_live(exe, spec)


def from_spec(spec: ScenarioSpec) -> Scenario:
    observe = partial(observe_kspec if spec.needs else observe_spec, spec)
    return Scenario(spec.name, spec.description, observe, spec.arches, spec)


def load_scenarios(folder: Path = SCENARIO_DIR) -> dict[str, Scenario]:
    """Every scenario file in ``folder``, by name (none if the folder is missing)."""
    if not folder.is_dir():
        return {}
    return {s.name: from_spec(s) for s in load_dir(folder)}


SCENARIOS: dict[str, Scenario] = load_scenarios()
