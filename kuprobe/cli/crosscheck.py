"""``kuprobe crosscheck``: each scenario on the reference model and on the live kernel.

The scenarios are TOML files under tests/scenarios/ (kuprobe.crosscheck.spec). For every
scenario and arch it runs on, it prints one table: each fact, what the model predicted, what the
kernel delivered, and whether they agree. Exit status 0 when everything agrees, 1 on any
disagreement (or when a side could not run), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from kuprobe.arch import host_arch
from kuprobe.cli._common import make_console
from kuprobe.crosscheck.scenarios import SCENARIO_DIR, SCENARIOS, Event, Result, Value, diff

# What live uprobes run here: the host's programs and its compat ones (x86_64: i386 too).
_HOST = host_arch()
ARCHES = _HOST.runs if _HOST is not None else ()

EXAMPLES = f"""\
examples:
  sudo kuprobe crosscheck                          every scenario, x86_64 and i386
  sudo kuprobe crosscheck --arch i386 args         one scenario, the 32-bit target
  sudo kuprobe crosscheck every-insn-calls mid-function
                                                   two scenarios, both arches
  kuprobe crosscheck --list                        the scenarios (no root needed)

scenarios: {", ".join(SCENARIOS)}

A scenario is a TOML file in {SCENARIO_DIR} (see its README.md); its program is
kuprobe/targets/PROGRAM.c, built for each arch on first use.
Live probes need root: BPF and uprobes. Exit status: 0 all agree, 1 a disagreement (or a side
could not run), 2 bad arguments.
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "crosscheck",
        help="run scenarios on the reference model and the live kernel, and compare",
        description="Run each SCENARIO (default: all) on the reference model and on the live "
        "kernel, with the same probes on the same target, and show where they agree.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "scenarios", nargs="*", type=_scenario_arg, metavar="SCENARIO", help="a scenario's name"
    )
    parser.add_argument(
        "--arch",
        choices=[*ARCHES, "all"],
        default="all",
        help=f"the target's arch (default: all, i.e. {' and '.join(ARCHES)})",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.set_defaults(func=run)
    return parser


def _scenario_arg(text: str) -> str:
    if text not in SCENARIOS:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {text!r} (choose from {', '.join(SCENARIOS)})"
        )
    return text


def run(args: argparse.Namespace, *, console: Console | None = None) -> int:
    from kuprobe.crosscheck.spec import ScenarioError
    from kuprobe.live.backend import LiveBackend
    from kuprobe.model import ModelError
    from kuprobe.targets import TargetError

    if console is None:
        console = make_console()
    if args.list:
        console.print(scenario_list())
        return 0
    LiveBackend.require_root()  # a ProbeError: the `kuprobe` command prints it, status 1
    names = list(dict.fromkeys(args.scenarios)) or list(SCENARIOS)
    arches = ARCHES if args.arch == "all" else (args.arch,)
    results = []
    for name in names:
        for arch in (a for a in arches if a in SCENARIOS[name].arches):
            if not _can_run_here(name):
                console.print(
                    Text.assemble(
                        (name, "bold"),
                        f" on {arch}: needs {SCENARIOS[name].needs}, which this kernel does not "
                        "have: it runs in the x86_64 guest (kuprobe vm test --arch x86_64 "
                        "tests/vm/test_crosscheck_kprobes.py)",
                        style="yellow",
                    )
                )
                console.print()
                continue
            try:
                result = SCENARIOS[name].run(arch)
            except (TargetError, ModelError, ScenarioError) as e:
                print(f"kuprobe crosscheck: error: {name} on {arch}: {e}", file=sys.stderr)
                return 1
            console.print(render(result))
            console.print()
            results.append(result)
    bad = [r for r in results if not r.agree]
    if bad:
        which = ", ".join(f"{r.scenario.name} on {r.arch}" for r in bad)
        console.print(f"[bold red]{len(bad)} of {len(results)} disagree:[/] {which}")
        return 1
    console.print(f"[bold green]all {len(results)} agree[/] (model and kernel)")
    return 0


def _can_run_here(name: str) -> bool:
    """A scenario whose live side needs kprobes runs only on a kernel with them."""
    from kuprobe.crosscheck._kprobes import kprobes_here

    return not SCENARIOS[name].needs or kprobes_here()


def scenario_list() -> Table:
    out = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    out.add_column("Scenario", no_wrap=True, style="bold")
    out.add_column("Arches", no_wrap=True)
    out.add_column("Side", no_wrap=True)  # host: this host's uprobes; vm: a guest's kprobes
    out.add_column("What it compares", overflow="fold")
    for s in SCENARIOS.values():
        side = s.spec.side if s.spec is not None else "host"
        out.add_row(Text(s.name), Text(" ".join(s.arches)), Text(side), Text(s.description))
    return out


def render(result: Result) -> Group:
    """One result: a title line saying whether it agrees, what it compares, the table."""
    s = result.scenario
    verdict = Text("agree", style="green") if result.agree else Text("DISAGREE", style="bold red")
    title = Text.assemble((s.name, "bold"), f" on {result.arch}: ", verdict)
    return Group(title, Text(s.description, style="dim"), table(result))


def table(result: Result) -> Table:
    """Each fact, the model's value, the kernel's, and whether they agree."""
    out = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    out.add_column("Observed", overflow="fold")
    out.add_column("Model predicted", overflow="fold")
    out.add_column("Kernel delivered", overflow="fold")
    out.add_column("Agree", overflow="fold")
    for fact, model, live, verdict in rows(result):
        style = "green" if verdict == "yes" else "bold red"
        out.add_row(Text(fact), Text(model), Text(live), Text(verdict, style=style))
    return out


_HITS = re.compile(r"(?P<func>\w+)\+(?P<off>0x[0-9a-f]+) hits")


def rows(result: Result) -> Iterator[tuple[str, str, str, str]]:
    """(fact, model, kernel, verdict) per fact. Consecutive instructions of one function
    hit equally often, and agreeing, share one row."""
    why = {d.fact: d.why for d in diff(result.model, result.live)}
    facts = [*result.model, *(f for f in result.live if f not in result.model)]
    i = 0
    while i < len(facts):
        fact = facts[i]
        m, k = result.model.get(fact), result.live.get(fact)
        j = i + 1
        first = _HITS.fullmatch(fact)
        if first and fact not in why:
            while j < len(facts) and facts[j] not in why and result.model.get(facts[j]) == m:
                nxt = _HITS.fullmatch(facts[j])
                if not nxt or nxt["func"] != first["func"]:
                    break
                j += 1
        if j - i > 1:
            last = _HITS.fullmatch(facts[j - 1])
            assert first is not None and last is not None
            fact = f"{first['func']}+{first['off']} … +{last['off']} hits ({j - i} insns)"
        yield fact, show(m), show(k), why.get(facts[i], "yes")
        i = j


def show(value: Value | None) -> str:
    """A value as a reader wants it: events in order, runs of like events shortened."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return ", ".join(_runs(value)) or "none"


def _runs(events: Sequence[Event]) -> Iterator[str]:
    """``entry(100) … entry(0) (101 events)`` for 3 or more events of one kind whose values move by
    the same step each time; others one by one."""
    i = 0
    while i < len(events):
        j = i + 1
        if j < len(events) and _alike(events[i], events[j]):
            step = _step(events[i], events[j])
            while j + 1 < len(events) and _alike(events[j], events[j + 1]):
                if _step(events[j], events[j + 1]) != step:
                    break
                j += 1
            j += 1
        if j - i >= 3:
            yield f"{events[i]} … {events[j - 1]} ({j - i} events)"
        else:
            j = i + 1
            yield str(events[i])
        i = j


def _alike(a: Event, b: Event) -> bool:
    return a.kind == b.kind and len(a.values) == len(b.values)


def _step(a: Event, b: Event) -> tuple[int, ...]:
    return tuple(y - x for x, y in zip(a.values, b.values, strict=True))
