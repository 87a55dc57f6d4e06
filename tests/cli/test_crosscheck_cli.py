"""``kuprobe crosscheck``: scenarios on the model and the live kernel, one table each.

Argument errors, ``--list``, the missing-root error and how a disagreement is shown need no
root; the real runs (marker ``live``) need the live capabilities and must agree.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from kuprobe.cli.crosscheck import run
from kuprobe.cli.main import build_parser, main
from kuprobe.crosscheck import SCENARIOS, Event, Observation, Scenario
from kuprobe.live.backend import LiveBackend
from kuprobe.model import ModelError

ARCHES = ["x86_64", "i386"]
ROOT = Path(__file__).resolve().parents[2]


def crosscheck(argv: list[str]) -> tuple[int, str]:
    """Exit status and what was printed (no colour, wide enough for one-line captions)."""
    args = build_parser().parse_args(["crosscheck", *argv])
    console = Console(file=io.StringIO(), width=200, color_system=None, _environ={})
    code = run(args, console=console)
    return code, console.file.getvalue()  # type: ignore[attr-defined]


def tables(out: str) -> list[tuple[str, list[list[str]]]]:
    """Each result's title and its rows as [observed, model, kernel, agree], wrapped cells
    joined (the summary after the last one is dropped)."""
    found = []
    for block in out.split("\n\n")[:-1]:
        title, _description, header, _rule, *body = block.splitlines()
        cols = [0, *(header.index(h) for h in ("Model predicted", "Kernel delivered", "Agree"))]
        rows: list[list[str]] = []
        for line in body:
            cells = [line[a:b].strip() for a, b in zip(cols, [*cols[1:], None], strict=True)]
            if cells[0] or not rows:
                rows.append(cells)
            else:  # a wrapped cell goes on
                rows[-1] = [f"{r} {c}".strip() for r, c in zip(rows[-1], cells, strict=True)]
        found.append((title.strip(), rows))
    return found


# --- no root needed ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["nosuch"],
            "kuprobe crosscheck: error: argument SCENARIO: unknown scenario 'nosuch' "
            f"(choose from {', '.join(SCENARIOS)})",
        ),
        (
            ["args", "every_insn_sw"],
            "kuprobe crosscheck: error: argument SCENARIO: unknown scenario 'every_insn_sw'",
        ),
        (
            ["--arch", "arm64"],
            "kuprobe crosscheck: error: argument --arch: invalid choice: 'arm64'",
        ),
        (["--arch"], "kuprobe crosscheck: error: argument --arch: expected one argument"),
        (["--bogus"], "kuprobe: error: unrecognized arguments: --bogus"),  # the top-level parser
    ],
)
def test_argument_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["crosscheck", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: kuprobe ")
    assert message in err


def test_list_names_every_scenario(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # listing needs no root
    code, out = crosscheck(["--list"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["Scenario", "Arches", "Side", "What", "it", "compares"]
    rows = [ln.split() for ln in lines[2:] if ln[:1] != " "]  # a wrapped description goes on
    assert [r[0] for r in rows] == list(SCENARIOS)
    assert [r[1] for r in rows] == [s.arches[0] for s in SCENARIOS.values()]
    # a kprobe scenario is listed, its live side the x86_64 guest's kernel
    sides = [r[1 + len(s.arches)] for r, s in zip(rows, SCENARIOS.values(), strict=True)]
    assert sides == ["vm" if s.needs else "host" for s in SCENARIOS.values()]
    assert {n for n, side in zip(SCENARIOS, sides, strict=True) if side == "vm"} == {
        n for n in SCENARIOS if n.startswith("k-")
    }
    assert len(SCENARIOS) >= 40
    assert {"args", "uretprobe-depth", "mid-function", "every-insn-sw"} <= set(SCENARIOS)


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["crosscheck", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "sudo kuprobe crosscheck --arch i386 args" in out
    assert "scenarios: args, args3-negative, args6," in out


def test_without_root_the_probe_error_is_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["crosscheck", "args"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing ran: no model-only half of a comparison
    assert captured.err.splitlines() == [
        "kuprobe crosscheck: error: live probes need root (CAP_BPF and CAP_PERFMON) [EPERM]",
        "kuprobe crosscheck: hint: run the script with sudo, or use kuprobe.model.Machine, "
        "which needs none",
    ]


def fake(monkeypatch: pytest.MonkeyPatch, model: Observation, live: Observation) -> None:
    """A scenario ``fake`` whose two sides saw ``model`` and ``live``; no root check."""

    def observe(arch: str) -> tuple[Observation, Observation]:
        assert arch == "x86_64"
        return model, live

    monkeypatch.setitem(SCENARIOS, "fake", Scenario("fake", "a made-up comparison", observe))
    monkeypatch.setattr(LiveBackend, "require_root", staticmethod(lambda: None))


def test_a_disagreement_is_shown_and_exits_1(
    targets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = [Event("entry", (1,)), Event("entry", (2,)), Event("entry", (3,)), Event("return", (9,))]
    model: Observation = {
        "f(1..3): sum of results": 6,
        "f+0x0 hits": 3,
        "f+0x1 hits": 3,
        "f+0x4 hits": 2,
        "g+0x0 hits": 2,
        "handler events, in order": tuple(e),
    }
    live = {**model, "f+0x4 hits": 1, "handler events, in order": (e[0], e[3]), "extra": 5}
    fake(monkeypatch, model, live)
    code, out = crosscheck(["--arch", "x86_64", "fake"])
    assert code == 1
    [(title, rows)] = tables(out)
    assert title == "fake on x86_64: DISAGREE"
    assert rows == [
        ["f(1..3): sum of results", "6", "6", "yes"],
        ["f+0x0 … +0x1 hits (2 insns)", "3", "3", "yes"],
        ["f+0x4 hits", "2", "1", "model 2, kernel 1"],
        ["g+0x0 hits", "2", "2", "yes"],  # another function: a row of its own
        [
            "handler events, in order",
            "entry(1) … entry(3) (3 events), return(9)",
            "entry(1), return(9)",
            "event 2: model entry(2), kernel return(9) (4 events in the model, 2 from the kernel)",
        ],
        ["extra", "-", "5", "only the kernel observed it"],
    ]
    assert out.splitlines()[-1] == "1 of 1 disagree: fake on x86_64"


def test_a_side_that_cannot_run_exits_1(
    targets: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def observe(arch: str) -> tuple[Observation, Observation]:
        raise ModelError("rec: the CPU stopped at 0x0")

    monkeypatch.setitem(SCENARIOS, "fake", Scenario("fake", "fails", observe))
    monkeypatch.setattr(LiveBackend, "require_root", staticmethod(lambda: None))
    code, _out = crosscheck(["--arch", "i386", "fake"])
    assert code == 1
    err = capsys.readouterr().err  # after what building the bundled target printed, if any
    assert err.endswith("kuprobe crosscheck: error: fake on i386: rec: the CPU stopped at 0x0\n")


# --- live -------------------------------------------------------------------------------------


@pytest.mark.live
@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name", ["args", "every-insn-sw", "consumers-mixed", "uretprobe-depth"])
def test_scenarios_agree_live(live: Path, name: str, arch: str) -> None:
    code, out = crosscheck(["--arch", arch, name])
    assert code == 0, out
    [(title, rows)] = tables(out)
    assert title == f"{name} on {arch}: agree"
    assert rows and all(r[3] == "yes" and r[1] == r[2] for r in rows), rows
    facts = [r[0] for r in rows]
    assert facts[0].startswith("call 1: ")
    assert any(f.endswith(" hits") or f.endswith(" insns)") for f in facts)
    assert out.splitlines()[-1] == "all 1 agree (model and kernel)"


@pytest.mark.live
def test_the_command_runs_every_scenario(live: Path) -> None:
    """The installed entry point, every scenario on both arches, as a user runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "kuprobe", "crosscheck"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [ln.strip() for ln in out.stdout.splitlines()]
    titles = [ln for ln in lines if " on " in ln and ln.endswith(": agree")]
    runs = [(n, a) for n, s in SCENARIOS.items() for a in ARCHES if a in s.arches and not s.needs]
    assert titles == [f"{n} on {a}: agree" for n, a in runs]
    # the kprobe scenarios are named, with where they run (this host has no kprobes)
    needs = [n for n, s in SCENARIOS.items() if s.needs]
    assert [ln.split(": needs ")[0] for ln in lines if ": needs kprobes" in ln] == [
        f"{n} on x86_64" for n in needs
    ]
    assert lines[-1] == f"all {len(runs)} agree (model and kernel)"


def test_a_missing_target_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled target is built from the package's own sources, into the cache folder."""
    from kuprobe.crosscheck import _target

    monkeypatch.setenv("KUPROBE_TARGET_CACHE", str(tmp_path))
    built = _target.target_path("x86_64")
    assert built == tmp_path / "x86_64" / "scenarios"
    out = subprocess.run([built, "add:1:2", "neg:5"], capture_output=True, text=True).stdout
    assert out == "add 3\nneg -16\n"
    assert not (tmp_path / "i386").exists()  # only the arch asked for


def test_a_target_that_cannot_build_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kuprobe.targets

    broken = tmp_path / "build.sh"
    broken.write_text("echo 'cc: not found' >&2; exit 3\n")
    monkeypatch.setattr(kuprobe.targets, "BUILD_SCRIPT", broken)
    monkeypatch.setenv("KUPROBE_TARGET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(LiveBackend, "require_root", staticmethod(lambda: None))
    code, out = crosscheck(["--arch", "i386", "args"])
    assert (code, out) == (1, "")
    assert capsys.readouterr().err == (
        "cc: not found\n"
        f"kuprobe crosscheck: error: args on i386: {broken} failed for i386 (exit status 3)\n"
    )
