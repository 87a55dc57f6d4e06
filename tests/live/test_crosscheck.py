"""The model's prediction against the live kernel, for uprobes on this host.

Each scenario of ``kuprobe.crosscheck`` runs the same probes (fresh objects of the same
description) on the reference model (kuprobe.model.Machine, executing the target's real code)
and on the live kernel, on the same ELF file and calls. What each observed must agree
exactly, and agree with what the kernel is known to do.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kuprobe.crosscheck import SCENARIOS, Event, Result
from kuprobe.crosscheck.scenarios import EVERY_INSN_FUNCS, EVERY_INSN_JOB, instruction_offsets

pytestmark = pytest.mark.live
ARCHES = ["x86_64", "i386"]


def run(name: str, arch: str) -> Result:
    result = SCENARIOS[name].run(arch)
    assert result.differences == []
    assert result.model == result.live  # exact: every fact, every event in order
    return result


def events(result: Result, kind: str) -> list[tuple[int, ...]]:
    seen = result.live["handler events, in order"]
    assert isinstance(seen, tuple)
    return [e.values for e in seen if e.kind == kind]


@pytest.mark.parametrize("arch", ARCHES)
def test_hits_at_every_instruction_agree(live: Path, arch: str) -> None:
    """A count-only uprobe on every instruction: per-offset hits, model vs kernel."""
    result = run("every-insn", arch)
    n, arg = EVERY_INSN_JOB
    exe = live / arch / "target"
    for func in EVERY_INSN_FUNCS:
        offsets = instruction_offsets(exe, func)
        hits = {o: result.live[f"{func}+{o:#x} hits"] for o in offsets}
        assert len(hits) == len(offsets) > 1
        assert hits[0] == n  # the entry: once per call
        assert all(isinstance(h, int) and h >= 0 for h in hits.values())
    # same results computed both ways; and what the C source computes
    assert result.live[f"sw({arg}..{arg + n - 1}): sum of results"] == 41 + 53 + 67 + 79 + 83 - 1


@pytest.mark.parametrize("arch", ARCHES)
def test_uretprobe_nesting_limit_agrees(live: Path, arch: str) -> None:
    """rec(100) under a uretprobe: 101 entries, 64 returns (MAX_URETPROBE_DEPTH) on both."""
    result = run("uretprobe-depth", arch)
    assert result.live["rec(100): sum of results"] == 100
    assert (result.live["hits"], result.live["return hits"]) == (101, 64)
    # entries count down 100..0; only the outermost 64 calls had their return hijacked
    # (kernel/events/uprobes.c: prepare_uretprobe() stops at MAX_URETPROBE_DEPTH), and they
    # return innermost first: rec(37) .. rec(100)
    assert events(result, "entry") == [(v,) for v in range(100, -1, -1)]
    assert events(result, "return") == [(v,) for v in range(37, 101)]


@pytest.mark.parametrize("arch", ARCHES)
def test_arguments_and_return_values_agree(live: Path, arch: str) -> None:
    """add(a, 2a): the ABI's arguments at entry (signed, i386 from the stack), then a + 2a."""
    result = run("args", arch)
    seen = result.live["handler events, in order"]
    expected: list[Event] = []
    for a in range(-2, 4):
        expected += [Event("entry", (a, 2 * a)), Event("return", (3 * a,))]
    assert seen == tuple(expected)
    assert (result.live["hits"], result.live["return hits"]) == (6, 6)


@pytest.mark.parametrize("arch", ARCHES)
def test_register_mid_function_agrees(live: Path, arch: str) -> None:
    """At mid_label inside midpoint(x) the accumulator holds 3x + 7 (funcs.c)."""
    result = run("mid-function", arch)
    assert events(result, "mid_label") == [(3 * x + 7,) for x in range(-2, 4)]
    assert result.live["midpoint(-2..3): sum of results"] == sum(3 * x for x in range(-2, 4))
