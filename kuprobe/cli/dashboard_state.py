"""What the dashboard shows: the latest sample, rates and trends since the ones before.

``DashboardState.update`` takes each new ``Sample``; the rest is the view's own state (the
sort order, paused, the log messages shown and when each redraw was done).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from kuprobe.cli.sample import ProbeSample, Sample

TREND_WIDTH = 16  # rates kept per probe: one character each in the trend column
MESSAGES = 3  # the latest log messages of the "kuprobe" logger, shown under the display
REDRAWS_KEPT = 1000
SORT_KEYS = ("hits", "rate", "missed", "name")


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
