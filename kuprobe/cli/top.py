"""``kuprobe top``: live probes in the dashboard."""

from __future__ import annotations

import argparse
from typing import Any

from kuprobe.cli import dashboard_loop
from kuprobe.cli._common import (
    SPEC_HELP,
    add_probe_options,
    checked,
    make_console,
    positive,
)
from kuprobe.cli._signals import stop_requested
from kuprobe.cli.session import AFTER_STOP, Session, Watch

EXAMPLES = """\
examples:
  sudo kuprobe top 'u:/bin/bash:readline' 'ur:/bin/bash:readline'
  sudo kuprobe top 'u:./demo:demo_handle' 'u:./demo:demo_handle+0xf' 'ur:./demo:demo_hash'
  sudo kuprobe top 'ur:/usr/lib/x86_64-linux-gnu/libc.so.6:malloc' --pid 1234 -d 30
  sudo kuprobe top 'u:./demo:demo_handle' --interval 2 | tee top.log    (no terminal)

keys: s next sort order (hits, rate, missed, name) · p pause the display · q quit.
Each row: hits, rate and its trend, nmissed, lost, handler errors; a return probe also gets
an entry->return latency histogram. Without a terminal a summary prints every --interval s.
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "top",
        help="live probes in a terminal dashboard",
        description="Attach probes live and watch their counters in a dashboard.",
        epilog=f"{SPEC_HELP}\n\n{EXAMPLES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_probe_options(parser)
    add_display_options(parser)
    parser.set_defaults(func=run)
    return parser


def add_display_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interval",
        "-i",
        type=positive,
        default=5.0,
        metavar="S",
        help="without a terminal: print a summary every S seconds (default 5)",
    )
    parser.add_argument(
        "--refresh",
        type=positive,
        default=0.5,
        metavar="S",
        help="on a terminal: redraw every S seconds (default 0.5)",
    )


def show(session: Session, args: argparse.Namespace, *, title: str) -> int:
    """Register the session's probes, run the dashboard on them, unregister (the events
    still queued get ``AFTER_STOP`` s to be handled; the rest show in DROPPED)."""
    console = make_console()
    with session.active(timeout=AFTER_STOP), stop_requested() as stop:
        state = dashboard_loop.run(
            session,
            console=console,
            title=title,
            refresh=args.refresh,
            interval=args.interval,
            duration=args.duration,
            stop=stop,
        )
    dashboard_loop.print_final(state, session.sample(), console)
    return 0


def run(args: argparse.Namespace) -> int:
    specs = checked(args.specs, args.pid)
    session = Session([Watch(spec, pid=args.pid) for spec in specs])
    return show(session, args, title="kuprobe top")
