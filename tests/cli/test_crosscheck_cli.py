"""``kuprobe crosscheck``: scenarios on the model and the live kernel, one table each.

Argument errors, ``--list``, the missing-root error and how a disagreement is shown need no
root; the real runs (marker ``live``) need the live capabilities and must agree.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from kuprobe.cli.crosscheck import run
from kuprobe.cli.main import build_parser, main
from kuprobe.crosscheck import SCENARIOS, Observation, ObservedEvent, Scenario
from kuprobe.crosscheck._kprobes import kprobes_here
from kuprobe.crosscheck.runs import HOST_ARCHES, decode_observation, why_not
from kuprobe.crosscheck.spec import NEEDS_KPROBES
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
            ["--arch", "mips"],
            "kuprobe crosscheck: error: argument --arch: invalid choice: 'mips'",
        ),
        (
            ["--side", "guest"],
            "kuprobe crosscheck: error: argument --side: invalid choice: 'guest'",
        ),
        (
            ["--json", "--list"],
            "kuprobe crosscheck: error: argument --list: not allowed with argument --json",
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
    assert lines[0].split() == ["Scenario", "Arches", "Probes", "What", "it", "compares"]
    rows = [ln.split() for ln in lines[2:] if ln[:1] != " "]  # a wrapped description goes on
    assert [r[0] for r in rows] == list(SCENARIOS)
    assert [r[1] for r in rows] == [s.arches[0] for s in SCENARIOS.values()]
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
    e = [
        ObservedEvent("entry", (1,)),
        ObservedEvent("entry", (2,)),
        ObservedEvent("entry", (3,)),
        ObservedEvent("return", (9,)),
    ]
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
    assert title == f"fake on x86_64 (host {os.uname().release}): DISAGREE"
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
    assert out.splitlines()[-1] == "1 of 1 disagree: fake on x86_64 (host)"


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


def json_lines(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[Any]]:
    """Exit status and the objects ``--json`` printed, one per line."""
    code = main(["crosscheck", "--json", *argv])
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_json_says_what_disagrees(
    targets: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    e = [ObservedEvent("add", (1, 2)), ObservedEvent("add return", (3,))]
    model: Observation = {
        "call 1: add(1, 2)": 3,
        "add hits": 1,
        "handler events, in order": tuple(e),
    }
    fake(monkeypatch, model, {**model, "add hits": 2, "handler events, in order": (e[0],)})
    code, [obj] = json_lines(["--arch", "x86_64", "fake"], capsys)
    assert code == 1
    assert obj == {
        "scenario": "fake",
        "arch": "x86_64",
        "side": "host",
        "ran": True,
        "kernel": os.uname().release,
        "semantics": os.uname().release,
        "agree": False,
        "differences": [
            {"fact": "add hits", "model": 1, "live": 2, "why": "model 1, kernel 2"},
            {
                "fact": "handler events, in order",
                "model": [{"kind": "add", "values": [1, 2]}, {"kind": "add return", "values": [3]}],
                "live": [{"kind": "add", "values": [1, 2]}],
                "why": "event 2: model add return(3), kernel nothing "
                "(2 events in the model, 1 from the kernel)",
            },
        ],
        "model": {
            "call 1: add(1, 2)": 3,
            "add hits": 1,
            "handler events, in order": [
                {"kind": "add", "values": [1, 2]},
                {"kind": "add return", "values": [3]},
            ],
        },
        "live": {
            "call 1: add(1, 2)": 3,
            "add hits": 2,
            "handler events, in order": [{"kind": "add", "values": [1, 2]}],
        },
    }
    # the JSON round-trips to the observations compared
    assert decode_observation(obj["model"]) == model


def test_what_a_side_cannot_run_is_said(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Programs of an arch this host does not run (arm64 on an x86_64 host, x86_64 on an
    arm64 one); i386 ones in no guest: said, in the table's summary and as JSON, and nothing
    having run is a failure."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # nothing that runs needs root
    other = next(a for a in ("arm64", "x86_64") if a not in HOST_ARCHES)
    runs = " and ".join(HOST_ARCHES) or "no"
    code, out = crosscheck(["--side", "host", "--arch", other, "args"])
    assert code == 1
    assert out.splitlines() == [
        f"not run on the host, {other} (this host runs {runs} programs only): args (1)",
        "nothing ran",
    ]
    code, objs = json_lines(["--side", "vm", "--arch", "i386", "args"], capsys)
    assert code == 1
    assert objs == [
        {
            "scenario": "args",
            "arch": "i386",
            "side": "vm",
            "ran": False,
            "agree": None,
            "reason": "no guest runs i386 programs (the x86_64 guest has no 32-bit C library)",
        }
    ]


def test_kprobe_scenarios_do_not_run_on_a_host_without_kprobes() -> None:
    kprobes = SCENARIOS["k-args"]
    assert kprobes.needs == NEEDS_KPROBES
    assert why_not(kprobes, "host", "x86_64", kprobes=False) == (
        "this host's kernel has no kprobes (no kprobe PMU)"
    )
    assert why_not(kprobes, "host", "x86_64", kprobes=True) is None
    assert why_not(kprobes, "vm", "x86_64") is None
    assert why_not(kprobes, "vm", "arm64") == (
        "kprobe scenarios run in the x86_64 guest (the test module is built for its kernel)"
    )
    assert why_not(SCENARIOS["args"], "host", "x86_64", kprobes=False) is None


def test_the_readme_table_is_current() -> None:
    """README.md's agreement table is what ``kuprobe crosscheck --markdown`` prints."""
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- agreement table: begin -->\n", "<!-- agreement table: end -->"
    assert begin in readme and end in readme, "README.md lost its agreement table markers"
    current = readme.split(begin, 1)[1].split(end, 1)[0]
    out = subprocess.run(
        [sys.executable, "-m", "kuprobe", "crosscheck", "--markdown"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    assert current == out, "README.md's table is stale: paste `kuprobe crosscheck --markdown`"
    rows = [ln for ln in out.splitlines()[2:]]
    assert [r.split("`")[1] for r in rows] == list(SCENARIOS)
    arm64 = [r for r in rows if r.rstrip(" |").endswith("agree")]
    assert len(arm64) >= 30  # the arm64 guest's column


@pytest.mark.slow
def test_an_installed_kuprobe_has_the_scenarios(tmp_path: Path) -> None:
    """The corpus is package data: a wheel's kuprobe lists every scenario, with no checkout
    and no $KUPROBE_SCENARIOS."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "wheel"), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    [wheel] = (tmp_path / "wheel").glob("kuprobe-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
         str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "KUPROBE_SCENARIOS"}
    script = (
        "import sys, kuprobe, kuprobe.cli; print(kuprobe.__file__, file=sys.stderr); "
        "kuprobe.cli.main(['crosscheck', '--list'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        cwd=tmp_path, env={**env, "PYTHONPATH": str(site), "COLUMNS": "200"},
    )  # fmt: skip
    assert done.stderr.startswith(str(site))  # the wheel's kuprobe, not this checkout's
    out = done.stdout
    names = [ln.split()[0] for ln in out.splitlines()[2:] if ln[:1] not in ("", " ")]
    assert names == list(SCENARIOS)


# --- live -------------------------------------------------------------------------------------


@pytest.mark.live
@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name", ["args", "every-insn-sw", "consumers-mixed", "uretprobe-depth"])
def test_scenarios_agree_live(live: Path, name: str, arch: str) -> None:
    code, out = crosscheck(["--arch", arch, name])
    assert code == 0, out
    [(title, rows)] = tables(out)
    assert title == f"{name} on {arch} (host {os.uname().release}): agree"
    assert rows and all(r[3] == "yes" and r[1] == r[2] for r in rows), rows
    facts = [r[0] for r in rows]
    assert facts[0].startswith("call 1: ")
    assert any(f.endswith(" hits") or f.endswith(" insns)") for f in facts)
    assert out.splitlines()[-1] == "all 1 agree (model and kernel)"


@pytest.mark.live
def test_json_of_a_live_run(live: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, objs = json_lines(["--arch", "i386", "args", "every-insn-sw"], capsys)
    assert code == 0
    assert [(o["scenario"], o["arch"], o["side"], o["agree"]) for o in objs] == [
        ("args", "i386", "host", True),
        ("every-insn-sw", "i386", "host", True),
    ]
    for o in objs:
        assert o["differences"] == [] and o["model"] == o["live"]
        assert o["kernel"] == os.uname().release
    assert objs[0]["live"]["call 1: add(-2, -4)"] == -6


def check_the_command(names: list[str]) -> None:
    """``kuprobe crosscheck NAMES…`` (every scenario when empty) through the installed entry
    point, as a user runs it: each scenario of this host's arches agrees, and what the host
    cannot run is said, kprobe scenarios included where its kernel has no kprobes (on the
    test module, built for the x86_64 guest's kernel: the host suite runs there too)."""
    kprobes = kprobes_here()
    out = subprocess.run(
        [sys.executable, "-m", "kuprobe", "crosscheck", *names],
        capture_output=True,
        text=True,
        timeout=1200 if kprobes else 300,
        cwd=ROOT,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [ln.strip() for ln in out.stdout.splitlines()]
    titles = [ln for ln in lines if " on " in ln and ln.endswith(": agree")]
    chosen = {n: s for n, s in SCENARIOS.items() if not names or n in names}
    runs = [
        (n, a)
        for n, s in chosen.items()
        for a in s.arches
        if a in HOST_ARCHES and (kprobes or s.needs != NEEDS_KPROBES)
    ]
    release = os.uname().release
    assert titles == [f"{n} on {a} (host {release}): agree" for n, a in runs]
    said = " ".join(" ".join(lines[lines.index(titles[-1]) + 1 :]).split())  # after the last
    for arch in ("x86_64", "i386", "arm64"):
        others = [n for n, s in chosen.items() if arch in s.arches]
        if arch not in HOST_ARCHES and others:
            runs_here = " and ".join(HOST_ARCHES)
            assert (
                f"not run on the host, {arch} (this host runs {runs_here} programs only): "
                f"{', '.join(others)} ({len(others)})"
            ) in said
    needing = [n for n, s in chosen.items() if s.needs == NEEDS_KPROBES]
    no_kprobes = (
        "not run on the host, x86_64 (this host's kernel has no kprobes (no kprobe PMU)): "
        f"{', '.join(needing)} ({len(needing)})"
    )
    assert (no_kprobes in said) == (not kprobes and "x86_64" in HOST_ARCHES)
    assert lines[-1] == f"all {len(runs)} agree (model and kernel)"


@pytest.mark.live
def test_the_command_runs_every_scenario(live: Path) -> None:
    """Every scenario (5.5 min in the TCG guest, where the VM stage's
    tests/vm/test_crosscheck_guest.py runs them all already: scripts/test.sh leaves this one
    out there)."""
    check_the_command([])


@pytest.mark.live
def test_the_command_runs_kprobe_and_uprobe_scenarios(live: Path) -> None:
    """A uprobe scenario beside kprobe ones: on a kernel with kprobes all of them run and
    agree, on one without, the kprobe ones are named as not run and the rest still agree."""
    check_the_command(["args", "k-args", "k-call"])


def test_a_missing_target_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled target is built from the package's own sources, into the cache folder."""
    from kuprobe.crosscheck import target

    monkeypatch.setenv("KUPROBE_TARGET_CACHE", str(tmp_path))
    built = target.target_path("x86_64")
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


@pytest.mark.live
def test_the_guest_side_round_trip(live: Path, tmp_path: Path) -> None:
    """What ``--side vm`` runs in a guest, run on this kernel: the live side written as JSON,
    read back, and compared with the model run here, as the host does with a guest's report."""
    from kuprobe.crosscheck.guest import GuestReport, model_semantics
    from kuprobe.crosscheck.sides import run_model
    from kuprobe.crosscheck.target import target_path

    names = ["args", "every-insn-sw", "consumers-mixed"]
    exe = target_path("x86_64")
    out = tmp_path / "live.json"
    subprocess.run(
        [sys.executable, "-m", "kuprobe.crosscheck.guest", "--arch", "x86_64",
         "--targets", str(exe.parent.parent), "--out", str(out), *names],
        check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    report = GuestReport.from_json(json.loads(out.read_text()))
    assert report.release == os.uname().release
    assert [s.scenario for s in report.scenarios] == names
    for seen in report.scenarios:
        spec = SCENARIOS[seen.scenario].spec
        assert spec is not None and seen.error is None and seen.live is not None
        model = run_model(exe, spec, semantics=model_semantics(report.release))
        assert model == seen.live
