"""``kuprobe trace``: one line per event, bpftrace-style, and a summary on Ctrl-C.

Handlers (on the live backend's dispatcher thread) only append the event to a deque; the
main thread formats and writes, so a slow terminal or pipe never stalls delivery. Each write
round takes only the events pending when it starts, so Ctrl-C is seen however fast events
come; after it, the events recorded before are handled and printed for at most
``AFTER_STOP`` s (bpftrace and perf print nothing more), the rest counted in the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections import deque
from typing import IO, Any

from kuprobe.cli._common import SPEC_HELP, add_probe_options, checked
from kuprobe.cli._signals import stop_requested
from kuprobe.cli.session import AFTER_STOP, Event, Session, Watch
from kuprobe.cli.units import format_ns

MAX_UNPRINTED = 100_000  # events waiting to be printed; beyond it they are counted, not kept
_POLL = 0.05
_CHECK_EVERY = 64  # lines written between two looks at Ctrl-C and the clock

EXAMPLES = """\
examples:
  sudo kuprobe trace 'u:/bin/bash:readline'
  sudo kuprobe trace 'ur:/bin/bash:readline retval:x' --pid 1234
  sudo kuprobe trace 'u:./demo:demo_handle arg0 arg1:x' 'ur:./demo:demo_hash retval' -d 5

output: seconds since start, pid/tid, comm, probe, values (and entry→return time on a
return probe). Ctrl-C stops and prints hits, nmissed and lost per probe.

--format json (or --json): one JSON object per line, for programs (jq, pandas …):
  {"time": 0.012345, "pid": 1235, "tgid": 1234, "comm": "demo", "probe": "ur:demo:demo_hash",
   "values": {"retval": 2748}, "latency": 1250}
  time: seconds since start; pid: the thread id (the kernel's task pid), tgid: the process;
  values: numbers (signed, or unsigned for :x); latency: ns from entry to return on a return
  probe whose entry was seen, else null. The last line is the counters:
  {"summary": [{"probe": …, "hits": …, "nmissed": …, "lost": …, "errors": …}], "unprinted": 0}
  e.g.  sudo kuprobe trace --json 'u:libc:getpid' -d 5 | jq -r .comm | sort | uniq -c
  With --stack each object also has "stack": ["demo_hash+0x0 (demo)", "main+0x51 (demo)", …].

--stack: the stack each event came from, innermost first, one frame per line below it
(recorded by the BPF program at the hit: bpf_get_stackid(), frame pointers), each frame as
function+offset (file) from the ELF symbols of the process's mappings, or kallsyms:
  sudo kuprobe trace --stack 'u:./demo:demo_hash'
     0.001234 4242/4242       demo             u:demo:demo_hash
          demo_hash+0x0 (demo)
          main+0x51 (demo)
  At a function's first instruction its own frame is not yet linked, so its direct
  caller is missing (as with every frame-pointer unwinder); probe past the prologue
  (e.g. +4 on x86_64: push %rbp; mov %rsp,%rbp) to see it.
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
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text lines (default) or JSON lines (see below)",
    )
    parser.add_argument(
        "--json", dest="format", action="store_const", const="json", help="--format json"
    )
    parser.add_argument(
        "--stack",
        action="store_true",
        help="print the stack of each event (user stack of a uprobe, kernel stack of a kprobe)",
    )
    parser.set_defaults(func=run)
    return parser


class _Printer:
    """Collects events from the dispatcher thread; the main thread writes them."""

    def __init__(self, out: IO[str], start_ns: int) -> None:
        self.out = out
        self.start_ns = start_ns
        self.pending: deque[Event] = deque()
        self.dropped = 0  # beyond MAX_UNPRINTED: the output could not keep up
        self.abandoned = 0  # still pending when the printing after Ctrl-C ran out of time

    def __call__(self, event: Event) -> None:  # dispatcher thread
        if len(self.pending) < MAX_UNPRINTED:
            self.pending.append(event)
        else:
            self.dropped += 1

    def header(self) -> None:
        self.out.write(f"{'TIME(s)':>10} {'PID/TID':<15} {'COMM':<16} PROBE\n")

    def flush(self, *, stop: threading.Event | None = None, until: float | None = None) -> bool:
        """Write the events pending now, not those that arrive meanwhile (while they come as
        fast as they are written, "until none is left" would never end), and fewer once
        ``stop`` is set or time.monotonic() passes ``until``. True if all were written."""
        pending, write = self.pending, self.out.write
        for i in range(len(pending)):
            if i % _CHECK_EVERY == 0 and (
                (stop is not None and stop.is_set())
                or (until is not None and time.monotonic() >= until)
            ):
                self.out.flush()
                return False
            write(self.line(pending.popleft()))
        self.out.flush()
        return True

    def abandon(self) -> None:
        """Count the events still pending instead of printing them."""
        self.abandoned += len(self.pending)
        self.pending.clear()

    @property
    def unprinted(self) -> int:
        return self.dropped + self.abandoned

    def line(self, ev: Event) -> str:
        t = (ev.ts - self.start_ns) / 1e9
        who = f"{ev.task.tgid}/{ev.task.pid}"
        parts = [f"{t:10.6f} {who:<15} {ev.task.comm:<16} {ev.watch.label}", *ev.values]
        if ev.latency_ns is not None:
            parts.append(f"({format_ns(ev.latency_ns)})")
        frames = "".join(f"        {f}\n" for f in ev.stack or ())
        return " ".join(parts) + "\n" + frames


class _JsonPrinter(_Printer):
    """One JSON object per event; the header is none (the first line is an event)."""

    def header(self) -> None:
        pass

    def line(self, ev: Event) -> str:
        return (
            json.dumps(
                {
                    "time": round((ev.ts - self.start_ns) / 1e9, 9),
                    "pid": ev.task.pid,
                    "tgid": ev.task.tgid,
                    "comm": ev.task.comm,
                    "probe": ev.watch.label,
                    "values": dict(ev.data),
                    "latency": ev.latency_ns,
                    **({} if ev.stack is None else {"stack": list(ev.stack)}),
                },
                separators=(",", ":"),
            )
            + "\n"
        )


def json_summary(session: Session, *, unprinted: int = 0) -> str:
    rows = []
    for w in session.watches:
        s = w.sample()
        rows.append(
            {
                "probe": s.label,
                "hits": s.hits,
                "nmissed": s.nmissed,
                "lost": s.lost,
                "errors": s.handler_errors,
            }
        )
    return json.dumps({"summary": rows, "unprinted": unprinted}, separators=(",", ":")) + "\n"


def summary(session: Session, *, dropped: int = 0, abandoned: int = 0) -> str:
    samples = [w.sample() for w in session.watches]
    show_dropped = any(s.dropped for s in samples)  # a column only when something was
    head = ("PROBE", "HITS", "NMISSED", "LOST", *(("DROPPED",) if show_dropped else ()), "ERRORS")
    rows: list[tuple[str, ...]] = [head]
    notes: list[str] = []
    for s in samples:
        counts = (s.hits, s.nmissed, s.lost, *((s.dropped,) if show_dropped else ()))
        rows.append((s.label, *map(str, (*counts, s.handler_errors))))
        if s.entry_lost:
            notes.append(f"{s.label}: also {s.entry_lost} entry events lost (LOST counts returns)")
    width = max(len(r[0]) for r in rows)
    lines = [f"{r[0]:<{width}} " + " ".join(f"{c:>8}" for c in r[1:]) for r in rows]
    lines += notes
    if show_dropped:
        lines.append("DROPPED: recorded but not handled (stopped before the handlers caught up)")
    if dropped:
        lines.append(f"{dropped} events were not printed: the output could not keep up")
    if abandoned:
        lines.append(
            f"{abandoned} events were not printed: still pending {AFTER_STOP:g} s after Ctrl-C"
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, *, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    specs = checked(args.specs, args.pid)
    as_json = getattr(args, "format", "text") == "json"
    printer = (_JsonPrinter if as_json else _Printer)(out, time.monotonic_ns())
    stack = bool(getattr(args, "stack", False))
    session = Session([Watch(spec, pid=args.pid, sink=printer, stack=stack) for spec in specs])
    deadline = None if args.duration is None else time.monotonic() + args.duration
    stop = threading.Event()  # replaced by stop_requested()'s, set by Ctrl-C
    try:
        session.register()
        printer.header()
        print(f"Tracing {len(specs)} probe(s); Ctrl-C to stop.", file=sys.stderr)
        with stop_requested() as stop:
            while not stop.wait(_POLL):
                printer.flush(stop=stop)
                if deadline is not None and time.monotonic() >= deadline:
                    break
    except KeyboardInterrupt:  # Ctrl-C while registering, or a second one
        stop.set()
    except BrokenPipeError:  # `kuprobe trace … | head`: the reader is gone; stop, summarise
        _quiet_stdout(printer)
    finally:
        budget = AFTER_STOP if stop.is_set() else None  # handling and printing, from Ctrl-C
        until = None if budget is None else time.monotonic() + budget
        session.unregister(timeout=budget)
        try:
            if not printer.flush(until=until):
                printer.abandon()
        except BrokenPipeError:
            _quiet_stdout(printer)
    if as_json:
        with contextlib.suppress(BrokenPipeError):
            out.write(json_summary(session, unprinted=printer.unprinted))
            out.flush()
    else:
        sys.stderr.write(
            "\n" + summary(session, dropped=printer.dropped, abandoned=printer.abandoned)
        )
    return 0


def _quiet_stdout(printer: _Printer) -> None:
    """Writes to a closed pipe go nowhere from now on (also the interpreter's last flush)."""
    printer.pending.clear()
    printer.out = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(printer.out.fileno(), sys.stdout.fileno())
