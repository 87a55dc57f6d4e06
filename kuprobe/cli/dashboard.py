"""The live terminal dashboard of ``kuprobe top`` and ``kuprobe demo`` (rich Live).

The display samples counters: a ``CounterSource`` hands it a ``Sample`` (each probe's
counters and latency histogram, hits per task) whenever it asks, at the refresh rate, and
the dashboard derives rates and trends from successive samples. It never waits on the event
path. ``render(state)`` is a pure function of the state, so tests render it into a capture
console; ``run`` adds the terminal: keys to sort, pause and quit, and on a non-terminal a
plain summary every ``interval`` seconds.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Protocol

from rich import box
from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kuprobe.cli._terminal import Keys, log_to, ticks

# Latency buckets by the 1-2-5 series, 100ns … 50s: bucket i holds [BOUNDS[i-1], BOUNDS[i]),
# bucket 0 everything under 100ns and the last everything from 50s. Handlers find the bucket
# with bisect.bisect_right(LATENCY_BOUNDS, ns).
LATENCY_BOUNDS: tuple[int, ...] = tuple(m * 10**e for e in range(2, 11) for m in (1, 2, 5))
LATENCY_BUCKETS = len(LATENCY_BOUNDS) + 1
TREND_WIDTH = 16
WIDE = 100  # columns from which the probe table has room for the trend
TOP_TASKS = 5
HIST_ROWS = 8
LATENCY_SUBTITLE = "latency entry→return"
MESSAGES = 3  # the latest log messages of the "kuprobe" logger, shown under the display
REDRAWS_KEPT = 1000
SORT_KEYS = ("hits", "rate", "missed", "name")
_SPARKS = "▁▂▃▄▅▆▇█"
_BAR = " ▏▎▍▌▋▊▉█"


@dataclass(frozen=True)
class ProbeSample:
    """One probe's counters at one instant."""

    label: str
    is_return: bool
    hits: int
    nmissed: int = 0
    lost: int = 0
    handler_errors: int = 0
    latency: tuple[int, ...] | None = None  # LATENCY_BUCKETS counts, return probes only
    dropped: int = 0  # recorded, never handled (an unregister that timed out, exit, a signal)
    entry_lost: int = 0  # a return probe's entry events lost (``lost`` counts its returns)


@dataclass(frozen=True)
class Sample:
    """Every probe's counters and the hits per (pid, comm), at ``time`` (monotonic s)."""

    time: float
    probes: tuple[ProbeSample, ...]
    tasks: Mapping[tuple[int, str], int] = field(default_factory=dict)


class CounterSource(Protocol):
    """What the dashboard reads: ``kuprobe.cli.session.Session`` is one."""

    def sample(self) -> Sample: ...


@dataclass
class ProbeRow:
    sample: ProbeSample
    rate: float = 0.0
    trend: deque[float] = field(default_factory=lambda: deque(maxlen=TREND_WIDTH))


@dataclass
class DashboardState:
    """What is on screen: the latest sample, rates since the one before, and the trends."""

    title: str = "kuprobe top"
    sort: str = "hits"
    paused: bool = False
    started: float | None = None
    now: float = 0.0
    rows: list[ProbeRow] = field(default_factory=list)
    tasks: Mapping[tuple[int, str], int] = field(default_factory=dict)
    task_rates: dict[tuple[int, str], float] = field(default_factory=dict)
    messages: deque[str] = field(default_factory=lambda: deque(maxlen=MESSAGES))
    # When each timed redraw of the terminal view was done (time.monotonic()): how late the
    # refreshes run against their period (benchmarks/bench_ceiling.py reads them).
    redraws: deque[float] = field(default_factory=lambda: deque(maxlen=REDRAWS_KEPT))
    _last: Sample | None = None

    def update(self, sample: Sample) -> None:
        """Take a new sample: rates are per second since the previous one."""
        if self.started is None:
            self.started = sample.time
        last = self._last
        dt = sample.time - last.time if last is not None else 0.0
        if len(self.rows) != len(sample.probes):
            self.rows = [ProbeRow(p) for p in sample.probes]
        for row, probe in zip(self.rows, sample.probes, strict=True):
            if last is not None and dt > 0:
                row.rate = max(probe.hits - row.sample.hits, 0) / dt
                row.trend.append(row.rate)
            row.sample = probe
        if last is not None and dt > 0:
            self.task_rates = {
                k: max(n - last.tasks.get(k, 0), 0) / dt for k, n in sample.tasks.items()
            }
        self.tasks = dict(sample.tasks)
        self.now = sample.time
        self._last = sample

    def next_sort(self) -> None:
        self.sort = SORT_KEYS[(SORT_KEYS.index(self.sort) + 1) % len(SORT_KEYS)]

    @property
    def elapsed(self) -> float:
        return 0.0 if self.started is None else self.now - self.started

    def sorted_rows(self) -> list[ProbeRow]:
        key = {
            "hits": lambda r: (-r.sample.hits, r.sample.label),
            "rate": lambda r: (-r.rate, r.sample.label),
            "missed": lambda r: (-(r.sample.nmissed + r.sample.lost), r.sample.label),
            "name": lambda r: (0, r.sample.label),
        }[self.sort]
        return sorted(self.rows, key=key)


# --- formatting -----------------------------------------------------------------------


def format_ns(ns: float) -> str:
    """512ns, 1.5µs, 20ms, 3s: at most two significant figures below 10, none above."""
    unit, scale = "ns", 1.0
    for bigger, factor in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= factor:
            unit, scale = bigger, factor
            break
    value = ns / scale
    text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
    return text.removesuffix(".0") + unit


def bucket_range(b: int) -> tuple[int, int | None]:
    """[low, high) of latency bucket ``b`` in ns; high is None for the last one."""
    low = LATENCY_BOUNDS[b - 1] if b else 0
    return low, (LATENCY_BOUNDS[b] if b < len(LATENCY_BOUNDS) else None)


def percentile(hist: Sequence[int], q: float) -> int | None:
    """The upper bound (ns) of the bucket holding quantile ``q``; None when empty.

    The last, open bucket reports its lower bound.
    """
    total = sum(hist)
    if not total:
        return None
    seen = 0
    for b, n in enumerate(hist):
        seen += n
        if seen >= q * total:
            low, high = bucket_range(b)
            return low if high is None else high
    return LATENCY_BOUNDS[-1]


def sparkline(values: Sequence[float], width: int = TREND_WIDTH) -> str:
    """One character per value, scaled to the largest; right-aligned in ``width``."""
    values = list(values)[-width:]
    top = max(values, default=0.0)
    chars = [
        _SPARKS[min(int(v / top * (len(_SPARKS) - 1) + 0.5), len(_SPARKS) - 1)] if top else "▁"
        for v in values
    ]
    return "".join(chars).rjust(width)


def bar(fraction: float, width: int) -> str:
    """A horizontal bar of ``fraction`` (0…1) of ``width`` cells, in eighths."""
    eighths = round(max(0.0, min(fraction, 1.0)) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (_BAR[part] if part else "")).ljust(width)


def _num(n: float) -> str:
    return f"{n:,.0f}"


def compact(n: float) -> str:
    """999, 1.2k, 34k, 5.6M: four characters at most."""
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale * 0.9995:
            value = n / scale
            return (f"{value:.1f}" if value < 9.95 else f"{value:.0f}") + suffix
    return f"{n:.0f}"


def _latency_cell(p: ProbeSample) -> str:
    if p.latency is None:
        return "-"
    p50, p99 = percentile(p.latency, 0.5), percentile(p.latency, 0.99)
    if p50 is None or p99 is None:
        return "no returns yet"
    return f"≤{format_ns(p50)} / ≤{format_ns(p99)}"


# --- rendering ------------------------------------------------------------------------


def header(state: DashboardState) -> Text:
    n = len(state.rows)
    text = Text()
    text.append(state.title, style="bold")
    text.append(f"  ·  {n} probe{'s' if n != 1 else ''}  ·  {state.elapsed:.1f}s")
    text.append(f"  ·  sort: {state.sort}")
    if state.paused:
        text.append("  ·  PAUSED", style="bold yellow")
    return text


def probe_table(state: DashboardState, *, width: int = WIDE, trend: bool = True) -> Table:
    """One row per probe. Below ``WIDE`` columns: no trend, and one space between columns."""
    narrow = width < WIDE
    table = Table(
        box=box.SIMPLE_HEAD,
        expand=True,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
        padding=(0, 0) if narrow else (0, 1),
    )
    trend = trend and not narrow
    longest = max((len(r.sample.label) for r in state.rows), default=5)
    table.add_column("Probe", ratio=1, overflow="fold", min_width=min(longest, width // 3))
    table.add_column("Hits", justify="right", style="bold")
    table.add_column("Rate/s", justify="right")
    if trend:
        table.add_column("Trend", width=TREND_WIDTH, no_wrap=True, style="cyan")
    table.add_column("Missed", justify="right")
    table.add_column("Lost", justify="right")
    dropped = any(r.sample.dropped for r in state.rows)  # shown once something was
    if dropped:
        table.add_column("Dropped", justify="right")
    table.add_column("Errors", justify="right")
    table.add_column("Latency p50/p99", justify="right", no_wrap=True)
    for row in state.sorted_rows():
        p = row.sample
        cells: list[str | Text] = [p.label, _num(p.hits), _num(row.rate)]
        if trend:
            cells.append(sparkline(row.trend))
        cells += [
            Text(_num(p.nmissed), style="red" if p.nmissed else ""),
            Text(_num(p.lost), style="red" if p.lost else ""),
            *([Text(_num(p.dropped), style="red")] if dropped else []),
            Text(_num(p.handler_errors), style="red" if p.handler_errors else ""),
            _latency_cell(p),
        ]
        table.add_row(*cells)
    return table


def tasks_table(state: DashboardState) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("PID", justify="right")
    table.add_column("Comm")
    table.add_column("Hits", justify="right")
    table.add_column("Rate/s", justify="right")
    table.add_column("Share", justify="right")
    total = sum(state.tasks.values()) or 1
    busy = [kv for kv in state.tasks.items() if kv[1]]
    ranked = sorted(busy, key=lambda kv: (-kv[1], kv[0]))[:TOP_TASKS]
    for (pid, comm), n in ranked:
        rate = state.task_rates.get((pid, comm), 0.0)
        table.add_row(str(pid), comm, _num(n), _num(rate), f"{100 * n / total:.0f}%")
    return table


def latency_histogram(p: ProbeSample, *, width: int = 16) -> Table:
    """The histogram of entry→return latency, bpftrace's ``hist()`` on a 1-2-5 scale."""
    table = Table.grid(padding=(0, 1))
    table.min_width = max(len(p.label), len(LATENCY_SUBTITLE)) + 2  # room for the titles
    table.add_column(justify="right", no_wrap=True)
    table.add_column(no_wrap=True, style="green")
    table.add_column(justify="right")
    hist = p.latency or ()
    used = [b for b, n in enumerate(hist) if n]
    if not used:
        table.add_row("", "no returns yet", "")
        return table
    first = used[0]
    last = min(used[-1], first + HIST_ROWS - 1)
    top = max(hist[first : last + 1])
    for b in range(first, last + 1):
        lo, hi = bucket_range(b)
        n = hist[b]
        if hi is None or (b == last and used[-1] > last):  # the tail folds into one row
            n = sum(hist[b:])
            label = f"≥{format_ns(lo)}"
        elif b == 0:
            label = f"<{format_ns(hi)}"
        else:
            label = f"{format_ns(lo)}-{format_ns(hi)}"
        table.add_row(label, bar(n / top, width), compact(n))
    return table


def render(state: DashboardState, *, width: int = 100) -> RenderableType:
    """The whole screen: header, probe table, top tasks and latency panels, keys.

    Narrower than ``WIDE`` columns, the probe table leaves out the trend.
    """
    panels: list[RenderableType] = [
        Panel(tasks_table(state), title="Top tasks", box=box.ROUNDED, expand=False)
    ]
    for row in state.sorted_rows():
        if row.sample.is_return:
            panels.append(
                Panel(
                    latency_histogram(row.sample),
                    title=row.sample.label,
                    subtitle=LATENCY_SUBTITLE,
                    box=box.ROUNDED,
                    expand=False,
                )
            )
    lower = Columns(panels, padding=(0, 1))
    keys = Text("s", style="bold").append(" sort  ", style="dim")
    keys.append("p", style="bold").append(" pause  ", style="dim")
    keys.append("q", style="bold").append(" quit", style="dim")
    table = probe_table(state, width=width)
    parts: list[RenderableType] = [header(state), table, lower]
    parts += [Text(m, style="yellow", no_wrap=True, overflow="ellipsis") for m in state.messages]
    return Group(*parts, keys)


def summary(state: DashboardState, *, width: int = WIDE) -> RenderableType:
    """What a non-terminal gets every few seconds, and everyone at the end."""
    tasks = tasks_table(state)
    tasks.title, tasks.title_justify = "Top tasks", "left"
    table = probe_table(state, width=width, trend=False)
    return Group(header(state), table, Text(), tasks)


# --- the terminal ---------------------------------------------------------------------


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
