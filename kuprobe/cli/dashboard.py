"""The dashboard's screen, drawn from its state: header, probe table, tasks, latency panels.

``render(state)`` (on a terminal) and ``summary(state)`` (elsewhere, and at the end) are pure
functions of a ``DashboardState``: tests render them into a capture console. Below ``WIDE``
columns the probe table leaves out the trend.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kuprobe.cli.dashboard_state import TREND_WIDTH, DashboardState
from kuprobe.cli.latency import bucket_range, percentile
from kuprobe.cli.sample import ProbeSample
from kuprobe.cli.units import compact, format_ns, grouped

WIDE = 100  # columns from which the probe table has room for the trend
TOP_TASKS = 5
HIST_ROWS = 8
LATENCY_SUBTITLE = "latency entry→return"
_SPARKS = "▁▂▃▄▅▆▇█"
_BAR = " ▏▎▍▌▋▊▉█"


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


def _latency_cell(p: ProbeSample) -> str:
    if p.latency is None:
        return "-"
    p50, p99 = percentile(p.latency, 0.5), percentile(p.latency, 0.99)
    if p50 is None or p99 is None:
        return "no returns yet"
    return f"≤{format_ns(p50)} / ≤{format_ns(p99)}"


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
        cells: list[str | Text] = [p.label, grouped(p.hits), grouped(row.rate)]
        if trend:
            cells.append(sparkline(row.trend))
        cells += [
            Text(grouped(p.nmissed), style="red" if p.nmissed else ""),
            Text(grouped(p.lost), style="red" if p.lost else ""),
            *([Text(grouped(p.dropped), style="red")] if dropped else []),
            Text(grouped(p.handler_errors), style="red" if p.handler_errors else ""),
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
        table.add_row(str(pid), comm, grouped(n), grouped(rate), f"{100 * n / total:.0f}%")
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
