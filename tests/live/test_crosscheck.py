"""The model's prediction against the live kernel, for uprobes on this host: every scenario of
tests/scenarios on every arch it names.

Each scenario runs the same probes (fresh objects of the same description) on the reference
model (kuprobe.model.Machine, executing the program's real code) and on the live kernel, on
the same ELF file and calls. What each observed must agree exactly; a few scenarios are also
checked against what the kernel is known to do.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kuprobe.crosscheck import SCENARIOS, ObservedEvent, Result
from kuprobe.crosscheck.runs import plan
from kuprobe.crosscheck.scenarios import instruction_offsets

pytestmark = pytest.mark.live
# What this host's side runs (the others, arm64 programs, run in the guest:
# tests/vm/test_crosscheck_guest.py)
CASES = [
    (p.scenario, p.arch) for p in plan(SCENARIOS.values(), ["x86_64", "i386"], ["host"]) if p.runs
]
_results: dict[tuple[str, str], Result] = {}


def run(name: str, arch: str) -> Result:
    if (name, arch) not in _results:
        _results[name, arch] = SCENARIOS[name].run(arch)
    result = _results[name, arch]
    assert result.differences == []
    assert result.model == result.live  # exact: every fact, every event in order
    return result


def events(result: Result, kind: str) -> list[tuple[int, ...]]:
    seen = result.live["handler events, in order"]
    assert isinstance(seen, tuple)
    return [e.values for e in seen if e.kind == kind]


def test_the_corpus_is_large() -> None:
    assert len(SCENARIOS) >= 40
    assert len(CASES) >= 80


@pytest.mark.parametrize(("name", "arch"), CASES, ids=[f"{n}-{a}" for n, a in CASES])
def test_scenario_agrees(live: Path, name: str, arch: str) -> None:
    result = run(name, arch)
    assert result.live  # something was observed


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_hits_at_every_instruction(live: Path, arch: str) -> None:
    """every-insn-sw: each instruction of the switch, hit as often as both sides say; the
    entry once per call; the results what the C source computes."""
    result = run("every-insn-sw", arch)
    exe = live / arch / "scenarios"
    offsets = instruction_offsets(exe, "sw")
    assert len(offsets) > 1
    assert result.live["sw+0x0 hits"] == 11  # sw(-1) .. sw(9)
    results = [v for f, v in result.live.items() if f.startswith("call ")]
    assert results == [-1, 11, 23, 37, 41, 53, 67, 79, 83, -1, -1]


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_uretprobe_nesting_limit(live: Path, arch: str) -> None:
    """rec(100) under a uretprobe: 101 entries, 64 returns (MAX_URETPROBE_DEPTH) on both."""
    result = run("uretprobe-depth", arch)
    assert (result.live["rec hits"], result.live["rec return hits"]) == (101, 64)
    # entries count down 100..0; only the outermost 64 calls had their return hijacked
    # (kernel/events/uprobes.c: prepare_uretprobe() stops at MAX_URETPROBE_DEPTH), and they
    # return innermost first: rec(37) .. rec(100)
    assert events(result, "rec") == [(v,) for v in range(100, -1, -1)]
    assert events(result, "rec return") == [(v,) for v in range(37, 101)]


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_arguments_and_return_values(live: Path, arch: str) -> None:
    """add(a, 2a): the ABI's arguments at entry (signed, i386 from the stack), then a + 2a."""
    result = run("args", arch)
    expected: list[ObservedEvent] = []
    for a in range(-2, 4):
        expected += [ObservedEvent("add", (a, 2 * a)), ObservedEvent("add return", (3 * a,))]
    assert result.live["handler events, in order"] == tuple(expected)


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_registers_mid_function(live: Path, arch: str) -> None:
    """At mid_label the accumulator holds 3x + 7; at regs_label bx..di hold x+1 .. x+5."""
    assert events(run("mid-function", arch), "mid_label") == [(3 * x + 7,) for x in range(-2, 4)]
    assert events(run("registers-mid", arch), "regs_label") == [
        tuple(x + i for i in range(1, 6)) for x in (0, -10, 1000)
    ]


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_pid_filtering(live: Path, arch: str) -> None:
    result = run("pid-other", arch)
    assert (result.live["this-process hits"], result.live["other-process hits"]) == (2, 0)
