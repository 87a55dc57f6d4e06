"""``kuprobe crosscheck``: each scenario on the reference model and on a live kernel.

The scenarios are TOML files (kuprobe.crosscheck.spec). For every scenario, arch and side it
runs on, it prints one table: each fact, what the model predicted, what the kernel delivered,
and whether they agree. The live side is this host's kernel (``--side host``), or a qemu guest
of the program's arch (``--side vm``: kuprobe.crosscheck.guest), or both. A (scenario, side,
arch) that side cannot run is said at the end, never dropped. Exit status 0 when everything
that ran agrees, 1 on any disagreement (or when a side that should run could not), 2 on bad
arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from kuprobe.arch import ARCHES
from kuprobe.cli._common import make_console
from kuprobe.crosscheck.runs import SIDES, Planned, Run, markdown_table, plan, run_json
from kuprobe.crosscheck.scenarios import (
    SCENARIO_DIR,
    SCENARIOS,
    ObservedEvent,
    ObservedValue,
    Result,
    diff,
)
from kuprobe.crosscheck.spec import NEEDS_KPROBES

ARCH_CHOICES = tuple(ARCHES)  # --arch: every arch kuprobe knows (or "all")

EXAMPLES = f"""\
examples:
  sudo kuprobe crosscheck                          every scenario on this host's kernel
  sudo kuprobe crosscheck --arch i386 args         one scenario, the 32-bit target
  sudo kuprobe crosscheck --side vm --arch arm64   the arm64 scenarios in the arm64 guest
  sudo kuprobe crosscheck --side all --json        everywhere, one JSON object per result
  kuprobe crosscheck --list                        the scenarios (no root needed)
  kuprobe crosscheck --markdown                    the README's agreement table

scenarios: {", ".join(SCENARIOS)}

A scenario is a TOML file in {SCENARIO_DIR} (see its README.md); its program is
kuprobe/targets/PROGRAM.c, built for each arch on first use.
Sides: host = this machine's kernel (uprobes for the x86_64 and i386 programs of an x86_64
host; kprobes only where the kernel has them); vm = a qemu guest per arch (kuprobe vm: x86_64,
arm64) boots once and runs the live side of each scenario there, the model runs here with the
semantics of the guest's kernel; all = both.
--json prints one object per line: {{"scenario", "arch", "side", "ran", "agree", and when it
ran "kernel" (the live kernel's release), "semantics" (the model's), "differences" (each
{{"fact", "model", "live", "why"}}), "model" and "live" (fact -> a number or a list of
{{"kind", "values"}} events)}}, or "reason" when it did not run.
Live probes need root: BPF and uprobes. Exit status: 0 all agree, 1 a disagreement (or a side
could not run), 2 bad arguments.
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "crosscheck",
        help="run scenarios on the reference model and the live kernel, and compare",
        description="Run each SCENARIO (default: all) on the reference model and on a live "
        "kernel, with the same probes on the same target, and show where they agree.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "scenarios", nargs="*", type=_scenario_arg, metavar="SCENARIO", help="a scenario's name"
    )
    parser.add_argument(
        "--arch",
        choices=[*ARCH_CHOICES, "all"],
        default="all",
        help="the target's arch (default: all, each arch a scenario names)",
    )
    parser.add_argument(
        "--side",
        choices=[*SIDES, "all"],
        default="host",
        help="where the live side runs: host (this kernel, the default), vm (a qemu guest "
        "per arch), all (both)",
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per result")
    out.add_argument("--list", action="store_true", help="list the scenarios and exit")
    out.add_argument(
        "--markdown",
        action="store_true",
        help="print the agreement table (scenario x side/arch) of the README and exit",
    )
    parser.set_defaults(func=run)
    return parser


def _scenario_arg(text: str) -> str:
    if text not in SCENARIOS:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {text!r} (choose from {', '.join(SCENARIOS)})"
        )
    return text


def run(args: argparse.Namespace, *, console: Console | None = None) -> int:
    from kuprobe.live.backend import LiveBackend

    if console is None:
        console = make_console()
    if args.list:
        console.print(scenario_list())
        return 0
    if args.markdown:
        print(markdown_table(list(SCENARIOS.values())), end="")
        return 0
    names = list(dict.fromkeys(args.scenarios)) or list(SCENARIOS)
    arches = ARCH_CHOICES if args.arch == "all" else (args.arch,)
    sides = SIDES if args.side == "all" else (args.side,)
    planned = plan([SCENARIOS[n] for n in names], arches, sides)
    if any(p.runs and p.side == "host" for p in planned):
        LiveBackend.require_root()  # a ProbeError: the `kuprobe` command prints it, status 1
    show = _json_line if args.json else _show_table(console)
    runs: list[Run] = []
    failed = False
    for p in planned:
        if p.side == "host" and p.runs:
            one = _host_run(p)
            if one is None:
                return 1
            runs.append(one)
            show(one)
    for arch in dict.fromkeys(p.arch for p in planned if p.side == "vm" and p.runs):
        mine = [p for p in planned if p.side == "vm" and p.arch == arch and p.runs]
        for one in _vm_runs(mine, arch):
            runs.append(one)
            if one.error is not None:
                failed = True
                print(f"kuprobe crosscheck: error: {_where(one.planned)}: {one.error}",
                      file=sys.stderr)  # fmt: skip
                if args.json:
                    _json_line(one)
            else:
                show(one)
    skipped = [p for p in planned if not p.runs]
    for p in skipped:
        if args.json:
            _json_line(Run(p))
    ran = [r for r in runs if r.result is not None]
    bad = [r for r in ran if not r.agree]
    if not args.json:
        _summary(console, ran, bad, skipped)
    return 1 if bad or failed or not ran else 0


def _where(p: Planned) -> str:
    return f"{p.scenario} on {p.arch} ({p.side})"


def _host_run(p: Planned) -> Run | None:
    """One scenario on this host's kernel; None (the error printed) when it cannot run."""
    from kuprobe.crosscheck.spec import ScenarioError
    from kuprobe.model import ModelError
    from kuprobe.targets import TargetError

    try:
        result = SCENARIOS[p.scenario].run(p.arch)
    except (TargetError, ModelError, ScenarioError) as e:
        print(f"kuprobe crosscheck: error: {p.scenario} on {p.arch}: {e}", file=sys.stderr)
        return None
    release = os.uname().release  # the model ran with this kernel's rules
    return Run(p, kernel=release, semantics=release, result=result)


def _vm_runs(planned: list[Planned], arch: str) -> Iterator[Run]:
    """The live sides of ``planned`` in one boot of the ARCH guest, the model's here."""
    from kuprobe.crosscheck.guest import model_semantics, run_in_vm
    from kuprobe.crosscheck.sides import run_model
    from kuprobe.crosscheck.target import target_path
    from kuprobe.errors import KuprobeError

    pairs = []
    for p in planned:
        spec = SCENARIOS[p.scenario].spec
        if spec is None:
            yield Run(p, error="not a scenario file: it cannot run in a guest")
        else:
            pairs.append((p, spec))
    if not pairs:
        return
    try:
        report = run_in_vm([spec for _, spec in pairs], arch)
    except KuprobeError as e:
        for p, _ in pairs:
            yield Run(p, error=str(e))
        return
    semantics = model_semantics(report.release)
    for (p, spec), seen in zip(pairs, report.scenarios, strict=True):
        if seen.error is not None or seen.live is None:
            yield Run(p, kernel=report.release, error=f"in the guest: {seen.error}")
            continue
        if seen.model is not None:  # a kprobe scenario: its model ran in the guest too
            result = Result(SCENARIOS[p.scenario], arch, seen.model, seen.live)
            yield Run(p, kernel=report.release, semantics=report.semantics, result=result)
            continue
        try:
            model = run_model(target_path(arch, spec.program), spec, semantics=semantics)
        except KuprobeError as e:
            yield Run(p, kernel=report.release, error=f"the model: {e}")
            continue
        result = Result(SCENARIOS[p.scenario], arch, model, seen.live)
        yield Run(p, kernel=report.release, semantics=str(semantics), result=result)


def _json_line(one: Run) -> None:
    print(json.dumps(run_json(one)), flush=True)


def _show_table(console: Console) -> Any:
    def show(one: Run) -> None:
        console.print(render(one))
        console.print()

    return show


def _summary(console: Console, ran: list[Run], bad: list[Run], skipped: list[Planned]) -> None:
    groups: dict[tuple[str, str, str], list[str]] = {}
    for p in skipped:
        assert p.reason is not None
        groups.setdefault((p.side, p.arch, p.reason), []).append(p.scenario)
    for (side, arch, reason), names in groups.items():
        console.print(
            f"[yellow]not run on the {side}, {arch}[/] ({escape(reason)}): "
            f"{', '.join(names)} ({len(names)})"
        )
    if bad:
        which = ", ".join(_where(r.planned) for r in bad)
        console.print(f"[bold red]{len(bad)} of {len(ran)} disagree:[/] {which}")
    elif ran:
        console.print(f"[bold green]all {len(ran)} agree[/] (model and kernel)")
    else:
        console.print("[bold red]nothing ran[/]")


def scenario_list() -> Table:
    out = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    out.add_column("Scenario", no_wrap=True, style="bold")
    out.add_column("Arches", no_wrap=True)
    out.add_column("Probes", no_wrap=True)  # kprobes: only a kernel with them (a guest)
    out.add_column("What it compares", overflow="fold")
    for s in SCENARIOS.values():
        probes = "kprobes" if s.needs == NEEDS_KPROBES else "uprobes"
        out.add_row(Text(s.name), Text(" ".join(s.arches)), Text(probes), Text(s.description))
    return out


def render(one: Run) -> Group:
    """One result: a title line saying where it ran and whether it agrees, what it compares,
    the table."""
    result = one.result
    assert result is not None
    s = result.scenario
    verdict = Text("agree", style="green") if result.agree else Text("DISAGREE", style="bold red")
    where = f" on {result.arch} ({one.planned.side} {one.kernel}): "
    title = Text.assemble((s.name, "bold"), where, verdict)
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


def show(value: ObservedValue | None) -> str:
    """A value as a reader wants it: events in order, runs of like events shortened."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return ", ".join(_runs(value)) or "none"


def _runs(events: Sequence[ObservedEvent]) -> Iterator[str]:
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


def _alike(a: ObservedEvent, b: ObservedEvent) -> bool:
    return a.kind == b.kind and len(a.values) == len(b.values)


def _step(a: ObservedEvent, b: ObservedEvent) -> tuple[int, ...]:
    return tuple(y - x for x, y in zip(a.values, b.values, strict=True))
