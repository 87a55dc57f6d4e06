"""``kuprobe model``: the trap timeline of a function run in the reference model.

The rows' details are the model's own words (tested with the model); here: that every
trap, handler call and state change shows up in order, named by probe and symbol.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from kuprobe.cli.main import build_parser, main
from kuprobe.cli.model import model_spec, run
from kuprobe.cli.spec import parse_spec


def model(argv: list[str]) -> tuple[int, list[list[str]], list[str]]:
    """Exit status, the timeline's rows split into cells, and the lines after it."""
    args = build_parser().parse_args(["model", *argv])
    console = Console(file=io.StringIO(), width=160, color_system=None, _environ={})
    code = run(args, console=console)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    table, _sep, rest = out.partition("\n\n")
    rows = [ln.split("   ") for ln in table.splitlines()[2:]]
    cells = [[c.strip() for c in row if c.strip()] for row in rows]
    return code, cells, rest.splitlines() if rest else out.splitlines()[-1:]


def test_model_spec_defaults_to_the_elf() -> None:
    assert model_spec("u:rec arg0", "/t/prog") == parse_spec("u:/t/prog:rec arg0")
    assert model_spec("ur:rec", "/t/prog") == parse_spec("ur:/t/prog:rec")
    assert model_spec("u:/other:rec", "/t/prog") == parse_spec("u:/other:rec")
    assert model_spec("k:add+4", "/t/prog") == parse_spec("k:add+4")


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_uprobe_and_uretprobe_timeline(targets: Path, arch: str) -> None:
    elf = str(targets / arch / "target-static")
    code, rows, after = model([elf, "add", "1", "2", "--probe", "u:add arg0 arg1",
                               "--probe", "ur:add retval"])  # fmt: skip
    assert code == 0
    kinds = [r[1] for r in rows]
    assert kinds[0] == "install"  # one breakpoint: both consumers share the (inode, offset)
    hit = kinds.index("breakpoint")
    assert rows[hit][2] == "add+0x1"  # ip after the int3
    # the consumers newest first, as the kernel's consumer_add() lists them; the task stays
    # RUNNING in the handlers (no UTASK_BP_HIT since about v3.7: kuprobe.model.semantics)
    assert [r[1:5] for r in rows[hit + 1 : hit + 3]] == [
        ["uprobe", "add", "ur:target-static:add", "RUNNING"],
        ["uprobe", "add", "u:target-static:add", "RUNNING"],
    ]
    assert "uretprobe" in kinds and kinds.index("uretprobe") > hit
    assert after == [
        "What the handlers printed, in order:",
        "u:target-static:add arg0=1 arg1=2",
        "ur:target-static:add retval=3",
        "add(1, 2) = 3",
    ]


def test_kprobe_timeline_in_kernel_space(targets: Path) -> None:
    elf = str(targets / "x86_64" / "target-static")
    code, rows, after = model([elf, "add", "1", "2", "--probe", "k:add arg0"])
    assert code == 0
    probed = [r for r in rows if "k:add" in r]
    assert probed and probed[0][1] == "register"
    assert any(r[1] == "kprobe" and "HIT_ACTIVE" in r for r in rows)
    assert after[-2:] == ["k:add arg0=1", "add(1, 2) = 3"]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ["add", "1", "--probe", "u:add+2"],
            2,
            "add+0x2 is not an instruction boundary decoded from add [EILSEQ]",
        ),
        (["nosuch"], 1, "no symbol 'nosuch' [ENOENT]"),
        (["add", "--probe", "u:nosuch"], 2, "no symbol 'nosuch'"),
        (["add", "--probe", "u:add", "--probe", "k:add"], 2, "either kernel (k:/kr:) or user"),
        (["add", "--probe", "x:add"], 2, "unknown probe type 'x'"),
        (["main"], 1, "kuprobe model: error: main(): target-static["),
        (["main"], 1, "] killed by SIGSEGV"),
    ],
)
def test_model_errors(
    targets: Path, argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model", str(targets / "x86_64" / "target-static"), *argv]) == code
    assert message in capsys.readouterr().err
