"""The dashboard's loop: sample, redraw and read keys until q, Ctrl-C, a signal or the end.

On a terminal, a full-screen rich ``Live`` view redrawn at the refresh rate, with keys to sort,
pause and quit, and "kuprobe" log messages shown inside it; elsewhere a plain summary every
``interval`` seconds. The clock and the keys are ``_terminal.py``'s.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO

from rich.console import Console

from kuprobe.cli._terminal import Keys, log_to, ticks
from kuprobe.cli.dashboard import render, summary
from kuprobe.cli.dashboard_state import DashboardState
from kuprobe.cli.sample import CounterSource, Sample


def run(
    source: CounterSource,
    *,
    console: Console | None = None,
    title: str = "kuprobe top",
    refresh: float = 0.5,
    interval: float = 5.0,
    duration: float | None = None,
    stdin: IO[str] | None = None,
    stop: threading.Event | None = None,
) -> DashboardState:
    """Show ``source`` until ``q``, Ctrl-C or ``duration`` seconds; returns the last state.

    On a terminal: a full-screen live view refreshed every ``refresh`` seconds, with keys
    ``s`` (next sort order), ``p`` or space (pause the display; counting goes on) and ``q``.
    Elsewhere: ``summary`` printed every ``interval`` seconds. Setting ``stop`` (from a
    signal handler: see ``kuprobe.cli._signals``) ends it, as Ctrl-C does.
    """
    console = console or Console()
    state = DashboardState(title=title)
    state.update(source.sample())
    try:
        if console.is_terminal:
            _run_live(source, state, console, refresh, duration, stdin or sys.stdin, stop)
        else:
            clock = ticks(interval, duration, Keys(None), stop)
            next(clock, None)  # the first tick is now, and already sampled
            for _ in clock:
                state.update(source.sample())
                console.print(summary(state, width=console.width))
                console.print()
    except KeyboardInterrupt:
        pass
    return state


def print_final(state: DashboardState, sample: Sample, console: Console) -> None:
    """The last summary, from a sample taken after the probes were unregistered.

    Its rates are averages over the whole run.
    """
    state.update(sample)
    state.paused = False
    if state.elapsed > 0:
        for row in state.rows:
            row.rate = row.sample.hits / state.elapsed
        state.task_rates = {k: n / state.elapsed for k, n in state.tasks.items()}
    console.print(summary(state, width=console.width))


def _run_live(
    source: CounterSource,
    state: DashboardState,
    console: Console,
    refresh: float,
    duration: float | None,
    stdin: IO[str],
    stop: threading.Event | None,
) -> None:
    from rich.live import Live

    with (
        Keys(stdin) as keys,
        log_to(state.messages),
        Live(
            render(state, width=console.width), console=console, screen=True, auto_refresh=False
        ) as live,
    ):
        for key in ticks(refresh, duration, keys, stop):
            if key is None:
                if not state.paused:
                    state.update(source.sample())
            elif key in ("q", "Q", "\x1b"):
                break
            elif key in ("p", "P", " "):
                state.paused = not state.paused
            elif key in ("s", "S"):
                state.next_sort()
            live.update(render(state, width=console.width), refresh=True)
            if key is None:
                state.redraws.append(time.monotonic())
