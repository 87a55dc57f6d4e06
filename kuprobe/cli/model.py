"""``kuprobe model``: run one function of an ELF in the reference model and show its traps.

The probes are the same objects ``kuprobe trace`` registers live; here they register on a
``kuprobe.model.Machine`` and the command prints ``Machine.trace`` — every trap, status or
utask-state change, handler call, single-step and fix-up, in order — as a table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from kuprobe.cli._common import make_console
from kuprobe.cli.session import Event, Session, Watch
from kuprobe.cli.spec import ProbeSpec, SpecError, check_spec, parse_spec

EXAMPLES = """\
examples:
  kuprobe model bundled:i386 rec 3 --probe 'u:rec arg0'
  kuprobe model bundled:x86_64 rec 2 --probe 'ur:rec retval'
  kuprobe model bundled:arm64 midpoint 5 --probe u:mid_label
  kuprobe model bundled:x86_64 add 1 2 --probe 'u:add arg0 arg1' --probe 'u:add+4'
  kuprobe model bundled:x86_64 add 1 2 --probe 'k:add arg0'      (add as kernel text)
  kuprobe model ./prog-static my_func 7 --probe 'u:my_func arg0'

ELF is a file, or bundled:ARCH for kuprobe's own probe target (kuprobe/targets/target.c,
static, built for ARCH on first use). A --probe spec is a trace spec whose file may be left
out (it is ELF): 'u:rec' means 'u:ELF:rec'. k:/kr: specs run ELF as kernel text. No root
needed: nothing is attached.
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "model",
        help="run a function in the reference model and print the trap timeline",
        description="Run FUNCTION of ELF in the reference model with probes on it, and "
        "print every trap and state change the kernel's semantics go through.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "elf",
        metavar="ELF",
        type=_elf_arg,
        help="a statically linked or self-contained ELF, or bundled:ARCH",
    )
    parser.add_argument("function", metavar="FUNCTION", help="the function to call")
    parser.add_argument(
        "args", nargs="*", type=_int_arg, metavar="ARG", help="integer arguments (0x… too)"
    )
    parser.add_argument(
        "--probe",
        dest="probes",
        action="append",
        default=[],
        metavar="SPEC",
        help="a probe on the function's file (repeatable)",
    )
    parser.set_defaults(func=run)
    return parser


def _elf_arg(text: str) -> str:
    """``bundled:ARCH``: the bundled target, static, built for ARCH; else a path."""
    if not text.startswith("bundled:"):
        return text
    from kuprobe.arch import ARCHES
    from kuprobe.targets import TargetError, bundled

    arch = text.removeprefix("bundled:")
    if arch not in ARCHES:
        raise argparse.ArgumentTypeError(f"{text!r}: no arch {arch!r} (one of {', '.join(ARCHES)})")
    try:
        return str(bundled(arch, "target-static"))
    except TargetError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _int_arg(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def model_spec(text: str, elf: str) -> ProbeSpec:
    """A spec, with ``u:sym`` / ``ur:sym`` read as a probe on ``elf``."""
    head = text.split(maxsplit=1)[0] if text.strip() else text
    prefix, _colon, body = head.partition(":")
    if prefix in ("u", "ur", "uprobe", "uretprobe") and ":" not in body:
        text = f"{prefix}:{elf}:{text.strip()[len(prefix) + 1 :]}"
    return parse_spec(text)


def timeline(machine: Any, watches: Sequence[Watch]) -> Table:
    """``machine.trace`` as a table: each trap, handler call and state change, in order."""
    labels = {id(w.probe): w.label for w in watches}
    where = _Symbolizer(machine)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("Event", no_wrap=True, style="bold")
    table.add_column("Address", no_wrap=True)
    table.add_column("Probe", no_wrap=True)
    table.add_column("State after", no_wrap=True, style="cyan")
    table.add_column("Detail", overflow="fold")
    for ev in machine.trace:
        probe = labels.get(id(ev.probe), "") if ev.probe is not None else ""
        addr = where(ev.addr) if ev.addr else ""
        table.add_row(str(ev.seq), ev.kind, addr, probe, ev.status, ev.detail)
    return table


class _Symbolizer:
    """0x401136 -> rec+0x6 (the ELF's function symbols), cached."""

    def __init__(self, machine: Any) -> None:
        self.image = machine.image
        self.cache: dict[int, str] = {}

    def __call__(self, addr: int) -> str:
        text = self.cache.get(addr)
        if text is None:
            sym = self.image.symbol_at(addr)
            if sym is None:
                text = f"{addr:#x}"
            else:
                off = addr - sym.value
                text = f"{sym.name}+{off:#x}" if off else sym.name
            self.cache[addr] = text
        return text


def run(args: argparse.Namespace, *, console: Console | None = None) -> int:
    from kuprobe.model import Machine, ModelError

    if console is None:
        console = make_console()
    specs = [model_spec(text, args.elf) for text in args.probes]
    for spec in specs:
        if spec.path is not None:
            check_spec(spec)
    kernel = {s.is_kernel for s in specs}
    if len(kernel) > 1:
        raise SpecError("give either kernel (k:/kr:) or user (u:/ur:) probes, not both")
    space = "kernel" if kernel == {True} else "user"
    machine = Machine.load(args.elf, space=space)
    events: list[Event] = []
    watches = [Watch(spec, sink=events.append) for spec in specs]
    session = Session(watches, backend=machine)
    session.register()
    called = f"{args.function}({', '.join(map(str, args.args))})"
    try:
        result = machine.call(args.function, *args.args)
    except ModelError as e:  # the timeline up to the failure is the useful part
        console.print(timeline(machine, watches))
        _print_events(console, events, watches)
        print(f"kuprobe model: error: {called}: {e}", file=sys.stderr)
        return 1
    finally:
        # Model uprobes are global to their file, as in the kernel: leave none behind.
        session.unregister()
    console.print(timeline(machine, watches))
    _print_events(console, events, watches)
    console.print(f"{called} = {_result(result)}")
    return 0


def _result(result: Any) -> str:
    return f"{result} ({result:#x})" if isinstance(result, int) and result > 9 else str(result)


def _print_events(console: Console, events: Sequence[Event], watches: Sequence[Watch]) -> None:
    if not any(w.spec.args for w in watches):
        return
    console.print()
    console.print("What the handlers printed, in order:", style="bold")
    for ev in events:
        console.print(f"{ev.watch.label} {' '.join(ev.values)}".rstrip())
