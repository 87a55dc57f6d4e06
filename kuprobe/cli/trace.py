"""``kuprobe trace``: one line per event, bpftrace-style, and a summary on Ctrl-C.

Handlers (on the live backend's dispatcher thread) only append the event to a deque; the
main thread formats and writes, so a slow terminal or pipe never stalls delivery.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from typing import IO, Any

from kuprobe.cli._common import SPEC_HELP, add_probe_options, checked
from kuprobe.cli._signals import stop_requested
from kuprobe.cli.dashboard import format_ns
from kuprobe.cli.session import Event, Session, Watch

MAX_PENDING = 100_000  # events waiting to be printed; beyond it they are counted, not kept
_POLL = 0.05

EXAMPLES = """\
examples:
  sudo kuprobe trace 'u:/bin/bash:readline'
  sudo kuprobe trace 'ur:/bin/bash:readline retval:x' --pid 1234
  sudo kuprobe trace 'u:./demo:demo_handle arg0 arg1:x' 'ur:./demo:demo_hash retval' -d 5

output: seconds since start, pid/tid, comm, probe, values (and entry→return time on a
return probe). Ctrl-C stops and prints hits, nmissed and lost per probe.
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "trace",
        help="print each event of live probes",
        description="Attach probes live and print one line per event.",
        epilog=f"{SPEC_HELP}\n\n{EXAMPLES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_probe_options(parser)
    parser.set_defaults(func=run)
    return parser


class _Printer:
    """Collects events from the dispatcher thread; the main thread writes them."""

    def __init__(self, out: IO[str], start_ns: int) -> None:
        self.out = out
        self.start_ns = start_ns
        self.pending: deque[Event] = deque()
        self.dropped = 0

    def __call__(self, event: Event) -> None:  # dispatcher thread
        if len(self.pending) < MAX_PENDING:
            self.pending.append(event)
        else:
            self.dropped += 1

    def header(self) -> None:
        self.out.write(f"{'TIME(s)':>10} {'PID/TID':<15} {'COMM':<16} PROBE\n")

    def flush(self) -> None:
        pending, write = self.pending, self.out.write
        while pending:
            write(self.line(pending.popleft()))
        self.out.flush()

    def line(self, ev: Event) -> str:
        t = (ev.ts - self.start_ns) / 1e9
        who = f"{ev.task.tgid}/{ev.task.pid}"
        parts = [f"{t:10.6f} {who:<15} {ev.task.comm:<16} {ev.watch.label}", *ev.values]
        if ev.latency_ns is not None:
            parts.append(f"({format_ns(ev.latency_ns)})")
        return " ".join(parts) + "\n"


def summary(session: Session, *, dropped: int = 0) -> str:
    rows = [("PROBE", "HITS", "NMISSED", "LOST", "ERRORS")]
    for w in session.watches:
        s = w.sample()
        rows.append((s.label, str(s.hits), str(s.nmissed), str(s.lost), str(s.handler_errors)))
    width = max(len(r[0]) for r in rows)
    lines = [f"{r[0]:<{width}} " + " ".join(f"{c:>8}" for c in r[1:]) for r in rows]
    if dropped:
        lines.append(f"{dropped} events were not printed: the output could not keep up")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, *, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    specs = checked(args.specs, args.pid)
    printer = _Printer(out, time.monotonic_ns())
    session = Session([Watch(spec, pid=args.pid, sink=printer) for spec in specs])
    deadline = None if args.duration is None else time.monotonic() + args.duration
    try:
        session.register()
        printer.header()
        print(f"Tracing {len(specs)} probe(s); Ctrl-C to stop.", file=sys.stderr)
        with stop_requested() as stop:
            while not stop.wait(_POLL):
                printer.flush()
                if deadline is not None and time.monotonic() >= deadline:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        session.unregister()
        printer.flush()
    sys.stderr.write("\n" + summary(session, dropped=printer.dropped))
    return 0
