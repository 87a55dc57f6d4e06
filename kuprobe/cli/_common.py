"""What the probing subcommands share: spec arguments and their checks."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from rich.console import Console

from kuprobe.cli.spec import EXAMPLES, ProbeSpec, SpecError, check_spec, parse_spec

SPEC_HELP = f"""\
probe specs (quote a spec that lists values to print):
{EXAMPLES}

  argN follows the probed code's calling convention (on i386 user code: the stack);
  retval is the return value (kr:/ur: only); a register goes by the kernel's name."""


def spec_arg(text: str) -> ProbeSpec:
    """argparse ``type=``: a spec, or a usage error naming what is wrong."""
    try:
        return parse_spec(text)
    except SpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_probe_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs", nargs="+", type=spec_arg, metavar="SPEC", help="a probe spec")
    parser.add_argument(
        "--pid", "-p", type=int, metavar="PID", help="only events of this process (tgid)"
    )
    parser.add_argument("--duration", "-d", type=positive, metavar="S", help="stop after S seconds")


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a time above 0 seconds")
    return value


def checked(specs: Sequence[ProbeSpec], pid: int | None = None) -> list[ProbeSpec]:
    """Every spec, after its file (a library name: the one process ``pid`` maps, if given)
    and symbol were found (``SpecError`` otherwise)."""
    for spec in specs:
        check_spec(spec, pid=pid)
    return list(specs)


def make_console() -> Console:
    """rich's console; written to a file or a pipe it is 120 columns wide (wide enough for
    the tables), not rich's 80, unless COLUMNS says otherwise."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 120
    return console
