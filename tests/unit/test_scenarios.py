"""Scenario files (tests/scenarios/*.toml): every one parses and names what exists; a bad file
is refused with a message naming it; the differ catches each kind of planted disagreement."""

from __future__ import annotations

from pathlib import Path

import pytest

from kuprobe.crosscheck import SCENARIOS, Observation, ObservedEvent, diff
from kuprobe.crosscheck.scenarios import SCENARIO_DIR
from kuprobe.crosscheck.sides import probe_offsets
from kuprobe.crosscheck.spec import ScenarioError, load, parse
from kuprobe.elf import ElfImage

ROOT = Path(__file__).resolve().parents[2]


def test_the_corpus_is_the_folder() -> None:
    """The package's corpus (package data) is tests/scenarios in a checkout."""
    assert SCENARIO_DIR == ROOT / "kuprobe" / "crosscheck" / "corpus"
    assert SCENARIO_DIR.resolve() == ROOT / "tests" / "scenarios"
    files = [p.stem for p in sorted(SCENARIO_DIR.glob("*.toml"))]
    assert list(SCENARIOS) == files
    assert len(files) >= 40


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_each_scenario_names_what_its_program_has(targets: Path, name: str) -> None:
    """Every probe's place resolves in every arch's build, and every called function exists."""
    spec = SCENARIOS[name].spec
    assert spec is not None and spec.description
    if spec.needs:  # the test module: its functions in the .ko (places: in the guest)
        with ElfImage(str(targets / "kmod" / f"{spec.program}.ko")) as ko:
            for p in spec.probes:
                assert ko.symbols[p.symbol].size > 0
            for c in spec.calls:
                assert c.action or ko.symbols[c.func].size > 0
        return
    for arch in spec.arches:
        exe = targets / arch / spec.program
        for p in spec.probes:
            assert probe_offsets(exe, p)
        with ElfImage(str(exe)) as elf:
            for c in spec.calls:
                assert elf.symbol(c.func).size > 0


GOOD = {
    "description": "d",
    "probe": [{"symbol": "add", "args": 2}],
    "call": [{"func": "add", "args": [1, 2]}],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"descripton": "x"}, "unknown key 'descripton'"),
        ({"description": None}, "'description' is required"),
        ({"arches": ["mips"]}, "arches are some of ['x86_64', 'i386', 'arm64']"),
        ({"compare": ["hitz"]}, "compare is some of"),
        ({"probe": []}, "needs at least one [[probe]] and one [[call]]"),
        ({"probe": [{"symbol": "add", "offset": 1, "at": "x"}]}, "give one of offset, at"),
        ({"probe": [{"symbol": "add", "every_insn": True, "ret": True}]}, "count hits only"),
        ({"probe": [{"symbol": "add", "pid": 7}]}, "pid is 'target' or 'other'"),
        ({"probe": [{"symbol": "add", "filter": "maybe"}]}, "filter is 'accept' or 'reject'"),
        ({"probe": [{"symbol": "add"}, {"symbol": "add"}]}, "two probes named 'add'"),
        ({"call": [{"func": "add", "args": [1], "range": [1, 2]}]}, "exactly one of args"),
        ({"call": [{"func": "add", "args": ["1"]}]}, "expected an integer"),
    ],
)
def test_a_bad_scenario_is_refused(change: dict[str, object], message: str) -> None:
    data = {**GOOD, **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ScenarioError, match="^bad: .*" + message.replace("[", r"\[")):
        parse("bad", data)


def test_calls_expand() -> None:
    spec = parse(
        "s",
        {
            **GOOD,
            "call": [
                {"func": "neg", "range": [-1, 1]},
                {"func": "add", "each": [[1, 2], [3, 4]]},
                {"func": "rec", "args": [5], "repeat": 2},
            ],
        },
    )
    assert [c.argv for c in spec.calls] == [
        "neg:-1", "neg:0", "neg:1", "add:1:2", "add:3:4", "rec:5", "rec:5",
    ]  # fmt: skip


def test_a_file_that_is_not_toml(tmp_path: Path) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text("description = \n")
    with pytest.raises(ScenarioError, match=f"^{bad}: "):
        load(bad)


# --- the differ -------------------------------------------------------------------------------

E = (ObservedEvent("f", (1,)), ObservedEvent("f return", (2,)), ObservedEvent("g", (3,)))
BASE: Observation = {"call 1: f(1)": 2, "f hits": 1, "handler events, in order": E}


@pytest.mark.parametrize(
    ("live", "fact", "why"),
    [
        ({**BASE, "f hits": 2}, "f hits", "model 1, kernel 2"),
        (
            {**BASE, "handler events, in order": (E[0], E[1], ObservedEvent("g", (4,)))},
            "handler events, in order",
            "event 3: model g(3), kernel g(4) (3 events in the model, 3 from the kernel)",
        ),
        (
            {**BASE, "handler events, in order": E[:2]},
            "handler events, in order",
            "event 3: model g(3), kernel nothing (3 events in the model, 2 from the kernel)",
        ),
        (
            {**BASE, "handler events, in order": (E[1], E[0], E[2])},
            "handler events, in order",
            "event 1: model f(1), kernel f return(2) (3 events in the model, 3 from the kernel)",
        ),
        (
            {**BASE, "handler events, in order": (*E, ObservedEvent("g", (3,)))},
            "handler events, in order",
            "event 4: model nothing, kernel g(3) (3 events in the model, 4 from the kernel)",
        ),
        ({**BASE, "g hits": 1}, "g hits", "only the kernel observed it"),
        ({k: v for k, v in BASE.items() if k != "f hits"}, "f hits", "only the model observed it"),
    ],
    ids=["value", "wrong-event", "missing-event", "reordered", "extra-event", "extra", "missing"],
)
def test_the_differ_catches_a_planted_disagreement(live: Observation, fact: str, why: str) -> None:
    [d] = diff(BASE, live)
    assert (d.fact, d.why) == (fact, why)
    assert diff(BASE, dict(BASE)) == []
