"""``kuprobe doctor``: what this machine can run, each missing piece with its fix."""

from __future__ import annotations

import argparse
import os
from typing import Any

from kuprobe.live.checks import checks, live_uprobes_possible
from kuprobe.live.hazards import doctor_rows


def run(args: Any) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"kuprobe doctor — {os.uname().release}", show_lines=False)
    table.add_column("check")
    table.add_column("")
    table.add_column("found")
    table.add_column("fix")
    for c in checks():
        table.add_row(
            c.name, "[green]ok[/]" if c.ok else "[red]no[/]", c.detail, "" if c.ok else c.fix
        )
    for name, ok, detail, fix in doctor_rows():  # kernel hazards, found by doing them
        table.add_row(name, "[green]ok[/]" if ok else "[red]no[/]", detail, "" if ok else fix)
    Console().print(table)
    live, _ = live_uprobes_possible()
    return 0 if live else 1


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "doctor",
        help="check what this machine can run (root, BPF, kprobes, uprobes, BCC, headers)",
        description="Check each thing live probes need and say how to fix what is missing. "
        "Exit status 0 when live uprobes can run here.\n\nexample:\n  sudo kuprobe doctor",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=run)
