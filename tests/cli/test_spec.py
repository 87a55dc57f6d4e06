"""Probe specs: what parses to what, and every mistake gives a clear message and status 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from kuprobe.cli import main
from kuprobe.cli.spec import Arg, ProbeSpec, SpecError, check_spec, parse_spec
from kuprobe.live.perf_event import pmu_type

from ..live.helpers import without_kprobes

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "tests" / "targets" / "build" / "x86_64" / "demo"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("k:do_sys_openat2", ProbeSpec("k", None, "do_sys_openat2", 0)),
        ("k:do_sys_openat2+4", ProbeSpec("k", None, "do_sys_openat2", 4)),
        ("kprobe:vfs_read+0x10", ProbeSpec("k", None, "vfs_read", 16)),
        ("kr:vfs_read retval", ProbeSpec("kr", None, "vfs_read", 0, (Arg("retval"),))),
        ("u:/bin/bash:readline", ProbeSpec("u", "/bin/bash", "readline", 0)),
        ("u:/bin/bash:readline+8", ProbeSpec("u", "/bin/bash", "readline", 8)),
        ("u:/bin/bash:0x8f0a0", ProbeSpec("u", "/bin/bash", None, 0x8F0A0)),
        ("uretprobe:/bin/bash:readline", ProbeSpec("ur", "/bin/bash", "readline", 0)),
        (
            "u:/bin/bash:readline arg0 di:x",
            ProbeSpec("u", "/bin/bash", "readline", 0, (Arg("arg0"), Arg("di", hex=True))),
        ),
        (
            "ur:/lib/x.so:f retval:x arg11",
            ProbeSpec("ur", "/lib/x.so", "f", 0, (Arg("retval", hex=True), Arg("arg11"))),
        ),
        ("u:/a:b:c:sym", ProbeSpec("u", "/a:b:c", "sym", 0)),  # the last ':' separates
    ],
)
def test_parse(text: str, expected: ProbeSpec) -> None:
    assert parse_spec(text) == expected


def test_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_spec("u:./prog:main").path == str(tmp_path / "prog")


def test_str_and_label() -> None:
    spec = parse_spec("u:/usr/bin/prog:f+0x10 arg0:x")
    assert str(spec) == "u:/usr/bin/prog:f+0x10 arg0:x"
    assert spec.label == "u:prog:f+0x10"
    assert parse_spec("kr:vfs_read").label == "kr:vfs_read"


BAD_SPECS = [
    ("", "empty probe spec"),
    ("readline", "a spec starts with k:, kr:, u:, ur: or usdt:"),
    ("x:foo", "unknown probe type 'x' (use k, kr, u, ur or usdt)"),
    ("k:", "no function name"),
    ("k:+4", "no function name"),
    ("k:vfs_read+", "nothing after '+'"),
    ("k:vfs_read+zz", "offset 'zz' is not a number"),
    ("k:9abc", "'9abc' is not a symbol name"),
    ("kr:vfs_read+4", "a return probe goes on a function's entry; drop the offset"),
    ("u:readline", "a uprobe needs a file and a place"),
    ("u::readline", "a uprobe needs a file and a place"),
    ("u:/bin/bash:", "no function or offset after '/bin/bash'"),
    ("u:/bin/bash:0xzz", "file offset '0xzz' is not a number"),
    ("ur:/bin/bash:0x100", "a return probe goes on a function's entry"),
    ("ur:/bin/bash:readline+2", "a return probe goes on a function's entry"),
    ("u:/bin/bash:readline retval", "retval exists only on a return probe (kr:/ur:), not on u:"),
    ("k:vfs_read arg12", "arg12 is out of range (arg0 … arg11)"),
    ("k:vfs_read foo", "'foo' is not argN, retval or a register name"),
    ("k:vfs_read arg0:q", "unknown format ':q' in 'arg0:q' (use :x, :d, :str[N], :buf[N]"),
    ("k:vfs_read Arg0", "cannot read 'Arg0'"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SPECS)
def test_bad_spec_message(text: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert message in str(info.value)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = int(e.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", ["trace", "top"])
@pytest.mark.parametrize(("text", "message"), [b for b in BAD_SPECS if b[0]])
def test_bad_spec_exits_2(
    command: str, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run([command, text], capsys)
    assert code == 2
    assert f"kuprobe {command}: error: argument SPEC:" in err
    assert message in err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "u:/nonexistent/prog:main",
            "/nonexistent/prog: no such file [ENOENT] (hint: check the path)",
        ),
        ("u:/etc/hostname:main", "/etc/hostname: not an ELF file"),
        (f"u:{DEMO}:no_such_function", "no symbol 'no_such_function'"),
        (f"u:{DEMO}:demo_hash+0x10000", "is past the end of demo_hash"),
        (f"u:{DEMO}:0x0", "file offset 0x0 is not in executable code"),
        (
            f"u:{DEMO}:demo_hash+1",
            "demo_hash+0x1 is not an instruction boundary decoded from demo_hash [EILSEQ]",
        ),
        (f"u:{DEMO}:demo_hash x5", "x86_64 has no register 'x5'"),
    ],
)
def test_spec_checked_against_the_file(
    spec: str, message: str, targets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(["trace", spec], capsys)
    assert (code, err.count("\n")) == (2, 1)
    assert err.startswith("kuprobe trace: error: ")
    assert message in err


def test_check_spec_gives_the_arch(targets: Path) -> None:
    assert check_spec(parse_spec(f"u:{targets}/i386/demo:rec")) == "i386"
    assert check_spec(parse_spec(f"u:{targets}/x86_64/demo:demo_handle+4 arg0")) == "x86_64"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trace"], "the following arguments are required: SPEC"),
        (["top"], "the following arguments are required: SPEC"),
        (["trace", "k:f", "--pid", "x"], "argument --pid/-p: invalid int value: 'x'"),
        (["top", "k:f", "--duration", "0"], "'0': give a time above 0 seconds"),
        (["top", "k:f", "-d", "soon"], "'soon' is not a number of seconds"),
        (["top", "k:f", "--interval", "-1"], "'-1': give a time above 0 seconds"),
        (["demo", "--duration", "x"], "'x' is not a number of seconds"),
        (["model", "elf", "f", "zz"], "'zz' is not an integer"),
        (["nosuch"], "invalid choice: 'nosuch'"),
    ],
)
def test_bad_arguments_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(argv, capsys)
    assert code == 2
    assert message in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "sudo kuprobe demo" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["trace", "top", "demo", "model"])
def test_help_teaches_by_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        main([command, "--help"])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr().out
    assert code == 0
    assert "examples:" in out
    assert f"kuprobe {command}" in out


@pytest.mark.parametrize("argv", [["trace", "k:vfs_read"], ["top", "kr:vfs_read retval"]])
def test_no_kprobes_is_a_clear_error(argv: list[str]) -> None:
    """The command on a kernel without kprobes; where this kernel has them, their PMU is
    hidden in a mount namespace (without_kprobes: root)."""
    if os.geteuid() != 0 and pmu_type("kprobe") is not None:
        pytest.skip("hiding this kernel's kprobe PMU needs root (a mount namespace)")
    done = without_kprobes([sys.executable, "-m", "kuprobe", *argv, "--duration", "1"])
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"kuprobe {argv[0]}: error: " in done.stderr
    assert "no kprobes (CONFIG_KPROBES is off) [EOPNOTSUPP]" in done.stderr
    assert f"kuprobe {argv[0]}: hint: " in done.stderr
    assert done.stdout == ""  # nothing printed as if tracing


def test_usdt_and_library_specs() -> None:
    s = parse_spec("usdt:./prog:kuprobe:round arg0 arg4:x")
    assert s.kind == "usdt" and s.provider == "kuprobe" and s.symbol == "round"
    assert s.path is not None and s.path.endswith("/prog") and s.path.startswith("/")
    assert s.label == "usdt:prog:kuprobe:round" and not s.is_return and not s.is_kernel
    assert str(s.args[1]) == "arg4:x"
    assert parse_spec("usdt:libc:libc:setjmp").path == "libc"  # a library name stays a name
    assert parse_spec("u:libc:getpid").path == "libc"
    assert parse_spec("u:libc:getpid").label == "u:libc:getpid"
    for bad in ("usdt:prog:round", "usdt:prog:kuprobe:", "usdt:prog:kup-robe:round"):
        with pytest.raises(SpecError):
            parse_spec(bad)


def test_memory_values() -> None:
    s = parse_spec("ur:/bin/bash:readline retval:str")
    (a,) = s.args
    assert (a.name, a.memory, a.size, a.offset, str(a)) == ("retval", "str", 256, 0, "retval:str")
    assert a.capture(kernel=False).space == "user"
    k = parse_spec("k:do_sys_openat2 arg1:str64 arg2+8:kbuf32").args
    assert (k[0].size, k[0].capture(kernel=True).space) == (64, "auto")
    assert (k[1].memory, k[1].offset, k[1].size, k[1].capture(kernel=True).space) == (
        "buf",
        8,
        32,
        "kernel",
    )
    for bad in ("u:/x:f arg0:str999", "u:/x:f arg0+8", "u:/x:f arg0:x8", "usdt:/x:p:n di:str"):
        with pytest.raises(SpecError):
            parse_spec(bad)
