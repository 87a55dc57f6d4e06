"""The dashboard, rendered into a capture console and compared character for character.

The counters come from ``FakeSource``, a scripted list of samples: these are unit tests of
the rendering and of the rates and trends derived from samples, not of probing (the live
test in test_top_live.py runs the real thing in tmux). Lines are compared without their
trailing spaces, which editors strip from the expected text.
"""

from __future__ import annotations

import io
import itertools
import threading
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
from rich.console import Console, RenderableType

from kuprobe.cli import _terminal, dashboard_loop
from kuprobe.cli.dashboard import bar, render, sparkline, summary
from kuprobe.cli.dashboard_state import SORT_KEYS, DashboardState
from kuprobe.cli.latency import LATENCY_BUCKETS, percentile
from kuprobe.cli.sample import ProbeSample, Sample
from kuprobe.cli.units import compact, format_ns


def hist(**buckets: int) -> tuple[int, ...]:
    """A latency histogram from bucket index -> count (``b12=3``)."""
    h = [0] * LATENCY_BUCKETS
    for name, n in buckets.items():
        h[int(name[1:])] = n
    return tuple(h)


def sample(t: float, k: int) -> Sample:
    """The k-th sample of a steady workload: entry, return and mid-function probes."""
    return Sample(
        time=t,
        probes=(
            ProbeSample("u:demo:demo_handle", False, 1000 * k + 100 * k * k),
            ProbeSample("u:demo:demo_handle+0xf", False, 1000 * k - 10 * k * k),
            ProbeSample(
                "ur:demo:demo_hash",
                True,
                900 * k,
                latency=hist(b3=5 * k, b4=40 * k, b5=100 * k, b6=7 * k, b12=k // 2),
            ),
            ProbeSample("u:demo32:rec", False, 3000 * k, nmissed=k, lost=2 * k, handler_errors=1),
        ),
        tasks={(4242, "demo"): 2900 * k, (4250, "demo32"): 3000 * k, (1, "init"): 3},
    )


class FakeSource:
    """A CounterSource that plays back a list of samples (the last one repeats)."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def sample(self) -> Sample:
        return self.samples.pop(0) if len(self.samples) > 1 else self.samples[0]


def text(renderable: RenderableType, width: int = 100) -> str:
    console = Console(
        file=io.StringIO(), width=width, color_system=None, legacy_windows=False, _environ={}
    )
    console.print(renderable)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    return "\n".join(line.rstrip() for line in out.splitlines())


def state_after(n: int, **kw: object) -> DashboardState:
    state = DashboardState(**kw)  # type: ignore[arg-type]
    source = FakeSource([sample(0.5 * k, k) for k in range(n)])
    for _ in range(n):
        state.update(source.sample())
    return state


def test_render_wide() -> None:
    assert text(render(state_after(6, title="kuprobe demo"))) == WIDE


def test_render_narrow_sorted_paused_with_a_message() -> None:
    state = state_after(6)
    state.next_sort()
    state.paused = True
    state.messages.append("kuprobe: 3 events lost (ring buffer full)")
    assert text(render(state, width=80), width=80) == NARROW


def test_render_before_any_rate() -> None:
    assert text(render(state_after(1))) == FIRST


def test_summary() -> None:
    assert text(summary(state_after(6))) == SUMMARY


def test_rates_and_trend_come_from_successive_samples() -> None:
    state = state_after(4)
    row = next(r for r in state.rows if r.sample.label == "u:demo:demo_handle")
    # hits 1000k + 100k^2 at t = k/2: rate (1000 + 100(2k-1)) / 0.5 for k = 1, 2, 3
    assert list(row.trend) == [2200.0, 2600.0, 3000.0]
    assert row.rate == 3000.0
    assert state.task_rates[(4242, "demo")] == 5800.0
    assert state.elapsed == 1.5


def test_sort_orders() -> None:
    state = state_after(3)
    orders = {}
    for _ in SORT_KEYS:
        orders[state.sort] = [r.sample.label for r in state.sorted_rows()]
        state.next_sort()
    assert state.sort == "hits"
    assert orders["name"] == sorted(orders["name"])
    assert orders["missed"][0] == "u:demo32:rec"
    assert orders["rate"][0] == "u:demo32:rec"


@pytest.mark.parametrize(
    ("ns", "shown"),
    [
        (0, "0ns"),
        (512, "512ns"),
        (1000, "1µs"),
        (1500, "1.5µs"),
        (20_000_000, "20ms"),
        (3e9, "3s"),
        (9_960, "10µs"),
    ],
)
def test_format_ns(ns: float, shown: str) -> None:
    assert format_ns(ns) == shown


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (0, "0"),
        (999, "999"),
        (1000, "1.0k"),
        (9949, "9.9k"),
        (9950, "10k"),
        (999_499, "999k"),
        (999_500, "1.0M"),
        (12_345_678, "12M"),
    ],
)
def test_compact(n: int, shown: str) -> None:
    assert compact(n) == shown


def test_sparkline_and_bar() -> None:
    assert sparkline([0, 1, 2, 4, 8], width=6) == " ▁▂▃▅█"
    assert sparkline([0, 0], width=3) == " ▁▁"
    assert sparkline([], width=2) == "  "
    assert bar(1.0, 4) == "████"
    assert bar(0.5, 4) == "██  "
    assert bar(0.25, 2) == "▌ "
    assert bar(0.3, 2) == "▋ "  # 4.8 eighths round to 5
    assert bar(0.0, 2) == "  "


def test_percentile() -> None:
    h = hist(b3=50, b5=49, b12=1)  # [500ns, 1µs): 50, [2µs, 5µs): 49, [500µs, 1ms): 1
    assert percentile(h, 0.5) == 1000
    assert percentile(h, 0.99) == 5000
    assert percentile(h, 1.0) == 1_000_000
    assert percentile(hist(b27=3), 0.5) == 50_000_000_000  # the open last bucket: its floor
    assert percentile(hist(), 0.5) is None


class StoppingSource(FakeSource):
    """Sets ``stop`` (as Ctrl-C does) once its last sample was taken: the run then ends
    after as many summaries as there were samples after the first, however slow the host."""

    def __init__(self, samples: Sequence[Sample], stop: threading.Event) -> None:
        super().__init__(samples)
        self.stop = stop

    def sample(self) -> Sample:
        if len(self.samples) == 1:
            self.stop.set()
        return super().sample()


def test_run_without_a_terminal_prints_summaries() -> None:
    console = Console(file=io.StringIO(), width=100, color_system=None, _environ={})
    stop = threading.Event()
    source = StoppingSource([sample(0.5 * k, k) for k in range(4)], stop)
    state = dashboard_loop.run(source, console=console, interval=0.05, stop=stop)
    printed = console.file.getvalue()  # type: ignore[attr-defined]
    assert printed.count("kuprobe top  ·  4 probes") == 3  # one per interval after the first
    assert state.rows[0].sample.hits == 3900  # the last sample, k = 3
    dashboard_loop.print_final(state, sample(2.0, 4), console)
    final = console.file.getvalue().split("\n\n")[-2]  # type: ignore[attr-defined]
    assert "u:demo32:rec                                   12,000   6,000" in final  # average


class _Pressed(_terminal.Keys):
    """A terminal on which ``q`` has been pressed."""

    def __init__(self) -> None:
        super().__init__(None)

    def read(self, timeout: float, stop: threading.Event | None = None) -> str | None:
        return "q"


def test_keys_are_read_when_each_refresh_overruns(monkeypatch: pytest.MonkeyPatch) -> None:
    """When drawing takes longer than --refresh (a slow guest, a flood), a refresh is always
    due; the key pressed must still come (q used to be never read)."""
    clock = itertools.count(0.0, 1.0)  # each look at the clock a second later than the last
    monkeypatch.setattr(_terminal, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    assert "q" in itertools.islice(_terminal.ticks(0.5, None, _Pressed(), None), 3)


WIDE = """\
kuprobe demo  ·  4 probes  ·  2.5s  ·  sort: hits
Probe                          Hits  Rate/s  Trend             Missed  Lost  Errors  Latency p50/p99
────────────────────────────────────────────────────────────────────────────────────────────────────
u:demo32:rec                 15,000   6,000             █████       5    10       1                -
u:demo:demo_handle            7,500   3,800             ▅▆▇▇█       0     0       0                -
u:demo:demo_handle+0xf        4,750   1,820             ████▇       0     0       0                -
ur:demo:demo_hash             4,500   1,800             █████       0     0       0     ≤5µs / ≤10µs
╭─────────────── Top tasks ───────────────╮ ╭─────── ur:demo:demo_hash ───────╮
│  PID   Comm       Hits   Rate/s   Share │ │  500ns-1µs ▊                 25 │
│ ─────────────────────────────────────── │ │    1µs-2µs ██████▍          200 │
│ 4250   demo32   15,000    6,000     51% │ │    2µs-5µs ████████████████ 500 │
│ 4242   demo     14,500    5,800     49% │ │   5µs-10µs █▏                35 │
│    1   init          3        0      0% │ │  10µs-20µs                    0 │
╰─────────────────────────────────────────╯ │  20µs-50µs                    0 │
                                            │ 50µs-100µs                    0 │
                                            │     ≥100µs ▏                  2 │
                                            ╰───── latency entry→return ──────╯
s sort  p pause  q quit"""


NARROW = """\
kuprobe top  ·  4 probes  ·  2.5s  ·  sort: rate  ·  PAUSED
Probe                             Hits Rate/s Missed Lost Errors Latency p50/p99
────────────────────────────────────────────────────────────────────────────────
u:demo32:rec                    15,000  6,000      5   10      1               -
u:demo:demo_handle               7,500  3,800      0    0      0               -
u:demo:demo_handle+0xf           4,750  1,820      0    0      0               -
ur:demo:demo_hash                4,500  1,800      0    0      0    ≤5µs / ≤10µs
╭─────────────── Top tasks ───────────────╮ ╭─────── ur:demo:demo_hash ───────╮
│  PID   Comm       Hits   Rate/s   Share │ │  500ns-1µs ▊                 25 │
│ ─────────────────────────────────────── │ │    1µs-2µs ██████▍          200 │
│ 4250   demo32   15,000    6,000     51% │ │    2µs-5µs ████████████████ 500 │
│ 4242   demo     14,500    5,800     49% │ │   5µs-10µs █▏                35 │
│    1   init          3        0      0% │ │  10µs-20µs                    0 │
╰─────────────────────────────────────────╯ │  20µs-50µs                    0 │
                                            │ 50µs-100µs                    0 │
                                            │     ≥100µs ▏                  2 │
                                            ╰───── latency entry→return ──────╯
kuprobe: 3 events lost (ring buffer full)
s sort  p pause  q quit"""


FIRST = """\
kuprobe top  ·  4 probes  ·  0.0s  ·  sort: hits
Probe                          Hits  Rate/s  Trend             Missed  Lost  Errors  Latency p50/p99
────────────────────────────────────────────────────────────────────────────────────────────────────
u:demo32:rec                      0       0                         0     0       1                -
u:demo:demo_handle                0       0                         0     0       0                -
u:demo:demo_handle+0xf            0       0                         0     0       0                -
ur:demo:demo_hash                 0       0                         0     0       0   no returns yet
╭──────────── Top tasks ─────────────╮ ╭── ur:demo:demo_hash ───╮
│ PID   Comm   Hits   Rate/s   Share │ │   no returns yet       │
│ ────────────────────────────────── │ ╰─ latency entry→return ─╯
│   1   init      3        0    100% │
╰────────────────────────────────────╯
s sort  p pause  q quit"""


SUMMARY = """\
kuprobe top  ·  4 probes  ·  2.5s  ·  sort: hits
Probe                                            Hits  Rate/s  Missed  Lost  Errors  Latency p50/p99
────────────────────────────────────────────────────────────────────────────────────────────────────
u:demo32:rec                                   15,000   6,000       5    10       1                -
u:demo:demo_handle                              7,500   3,800       0     0       0                -
u:demo:demo_handle+0xf                          4,750   1,820       0     0       0                -
ur:demo:demo_hash                               4,500   1,800       0     0       0     ≤5µs / ≤10µs

Top tasks
 PID   Comm       Hits   Rate/s   Share
───────────────────────────────────────
4250   demo32   15,000    6,000     51%
4242   demo     14,500    5,800     49%
   1   init          3        0      0%"""
