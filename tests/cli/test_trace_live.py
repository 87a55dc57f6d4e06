"""``kuprobe trace`` and ``kuprobe demo`` on real processes, as root (marker ``live``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from ..live.helpers import (
    EVENT_TIMEOUT,
    KUPROBE,
    Lines,
    flooding,
    start_trace,
    trace,
    trace_until,
    wait_until,
)

pytestmark = pytest.mark.live


def test_trace_prints_events_and_a_summary_on_ctrl_c(live: Path) -> None:
    exe = (live / "i386" / "demo").resolve()  # a 32-bit process: cdecl arguments
    demo = subprocess.Popen([str(exe), "60"])

    def enough(lines: list[str]) -> bool:  # what the assertions below need, and one more
        entries = sum(" u:demo:demo_handle " in ln for ln in lines)
        timed = sum(" ur:demo:demo_hash " in ln and ln.rstrip().endswith("s)") for ln in lines)
        return entries > 101 and timed > 101

    try:
        run = trace_until(
            f"u:{exe}:demo_handle arg0",
            f"ur:{exe}:demo_hash retval:x",
            "--pid",
            str(demo.pid),
            probes=2,
            enough=enough,
            what="over 100 entries and timed returns traced",
        )
    finally:
        demo.kill()
        demo.wait()
    out, err = run.stdout, run.stderr
    assert run.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["TIME(s)", "PID/TID", "COMM", "PROBE"]  # then the events
    entries = [ln.split() for ln in lines if " u:demo:demo_handle " in ln]
    returns = [ln.split() for ln in lines if " ur:demo:demo_hash " in ln]
    assert len(entries) > 100 and len(returns) > 100
    ids = [int(e[-1].removeprefix("arg0=")) for e in entries]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # every call, in order
    assert {e[1] for e in entries} == {f"{demo.pid}/{demo.pid}"}
    timed = [r for r in returns if r[-1].endswith("s)") and r[-2].startswith("retval=0x")]
    untimed = [r for r in returns if r[-1].startswith("retval=0x")]
    assert len(timed) + len(untimed) == len(returns) and len(timed) > 100
    # Returns without a seen entry have no latency: a call in flight as the probes went in,
    # and the returns while unregistering (the entry probe is detached first).
    last_timed = max(float(r[0]) for r in timed)
    assert len([r for r in untimed if float(r[0]) < last_timed]) <= 2
    times = [float(e[0]) for e in entries]
    assert times == sorted(times)
    summary = err.split("PROBE", 1)[1].splitlines()
    counts = {row.split()[0]: int(row.split()[1]) for row in summary[1:3]}
    assert counts["u:demo:demo_handle"] >= len(entries)
    assert counts["ur:demo:demo_hash"] >= len(returns)


def test_demo_without_a_terminal(live: Path) -> None:
    run = subprocess.run(
        [str(KUPROBE), "demo", "--duration", "3", "--interval", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    # the last summary (those every --interval are counted in test_dashboard.py: here a
    # loaded host may run the whole --duration before the first tick)
    assert "kuprobe demo  ·  5 probes" in run.stdout, run.stdout
    final = run.stdout.split("kuprobe demo  ·  5 probes")[-1]
    rows = {ln.split()[0]: ln.split() for ln in final.splitlines() if ln.startswith(("u:", "ur:"))}
    assert set(rows) == {
        "u:x86_64/demo:demo_handle",
        f"u:x86_64/demo:demo_handle+{rows and _mid(rows)}",
        "ur:x86_64/demo:demo_hash",
        "u:i386/demo:demo_handle",
        "ur:i386/demo:rec",
    }
    for label, row in rows.items():
        assert int(row[1].replace(",", "")) > 0, (label, final)
    # a latency, as the dashboard writes one (a slow guest's may be in ms)
    assert re.fullmatch(r"≤?\d+(\.\d)?(ns|µs|ms|s)", rows["ur:x86_64/demo:demo_hash"][-1])


def _mid(rows: dict[str, list[str]]) -> str:
    mids = [k for k in rows if k.startswith("u:x86_64/demo:demo_handle+")]
    return mids[0].rsplit("+", 1)[1] if mids else "?"


def test_trace_json_lines_parse(live: Path) -> None:
    """--format json: one object per event with numbers, then the counters."""
    exe = (live / "x86_64" / "demo").resolve()
    demo = subprocess.Popen([str(exe), "60"])

    def enough(lines: list[str]) -> bool:  # what the assertions below need, and one more
        entries = sum('"probe":"u:demo:demo_handle"' in ln for ln in lines)
        timed = sum('"probe":"ur:demo:demo_hash"' in ln and '"latency":null' not in ln
                    for ln in lines)  # fmt: skip
        return entries > 101 and timed > 101

    try:
        out = trace_until(
            "--format",
            "json",
            f"u:{exe}:demo_handle arg0",
            f"ur:{exe}:demo_hash retval:x",
            "--pid",
            str(demo.pid),
            probes=2,
            enough=enough,
            what="over 100 entries and timed returns traced",
        )
    finally:
        demo.kill()
        demo.wait()
    assert out.returncode == 0, out.stderr
    objs = [json.loads(line) for line in out.stdout.splitlines()]
    events, last = objs[:-1], objs[-1]
    entries = [e for e in events if e["probe"] == "u:demo:demo_handle"]
    returns = [e for e in events if e["probe"] == "ur:demo:demo_hash"]
    assert len(entries) > 100 and len(returns) > 100
    for e in events:
        assert set(e) == {"time", "pid", "tgid", "comm", "probe", "values", "latency"}
        assert e["tgid"] == demo.pid and e["pid"] == demo.pid and e["comm"] == "demo"
    ids = [e["values"]["arg0"] for e in entries]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # numbers, every call in order
    assert all(e["latency"] is None for e in entries)
    assert all(
        isinstance(r["values"]["retval"], int) and r["values"]["retval"] >= 0 for r in returns
    )
    assert sum(isinstance(r["latency"], int) and r["latency"] > 0 for r in returns) > 100
    assert [e["time"] for e in entries] == sorted(e["time"] for e in entries)
    rows = {r["probe"]: r for r in last["summary"]}
    assert last["unprinted"] == 0
    assert rows["u:demo:demo_handle"]["hits"] == len(entries)  # the counters are final
    assert set(rows["ur:demo:demo_hash"]) == {"probe", "hits", "nmissed", "lost", "errors"}
    assert rows["u:demo:demo_handle"]["lost"] == 0 and rows["u:demo:demo_handle"]["errors"] == 0
    same = trace("--json", f"u:{exe}:demo_handle", "-d", "0.2")
    assert same.returncode == 0 and "summary" in json.loads(same.stdout.splitlines()[-1])


class SlowReader:
    """A stream read as a slow terminal takes it: ``chunk`` bytes every ``pace`` s (a pace,
    not a wait for an event), its lines counted and its first 64 KiB kept."""

    def __init__(self, stream: IO[str], *, chunk: int = 4096, pace: float = 0.01) -> None:
        self.lines = 0
        self.head = b""
        self._fd, self._chunk, self._pace = stream.fileno(), chunk, pace
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while data := os.read(self._fd, self._chunk):
            self.lines += data.count(b"\n")
            if len(self.head) < 65536:
                self.head += data
            time.sleep(self._pace)

    def wait_end(self) -> None:
        self._thread.join(EVENT_TIMEOUT)
        assert not self._thread.is_alive(), f"the output did not end within {EVENT_TIMEOUT:g} s"


def test_trace_stops_on_ctrl_c_during_a_flood(live: Path) -> None:
    """Ctrl-C while events come faster than their lines are read: trace stops printing,
    detaches and prints its summary while the flood goes on (it used to print until no event
    was pending, which a flood never lets happen: it ran until the traced program ended)."""
    exe = (live / "x86_64" / "target").resolve()
    with flooding(exe) as floods:
        trace = start_trace(f"u:{exe}:add arg0", probes=1)
        assert trace.stdout is not None and trace.stderr is not None
        out, err = SlowReader(trace.stdout), Lines(trace.stderr)
        try:
            wait_until(lambda: out.lines > 1000, "1000 events printed")
            trace.send_signal(signal.SIGINT)
            try:
                trace.wait(timeout=EVENT_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"trace still running {EVENT_TIMEOUT:g} s after Ctrl-C")
        finally:
            if trace.poll() is None:
                trace.kill()
                trace.wait()
        alive = [f.poll() is None for f in floods]
    assert all(alive)  # it stopped during the flood, not after it
    summary = err.all()
    assert trace.returncode == 0, summary
    out.wait_end()
    head = out.head.decode().splitlines()
    assert head[0].split() == ["TIME(s)", "PID/TID", "COMM", "PROBE"]
    assert " u:target:add arg0=" in head[1]
    lines = summary.split("\nPROBE", 1)[1].splitlines()
    row = dict(zip(["PROBE", *lines[0].split()], lines[1].split(), strict=True))
    assert row["PROBE"] == "u:target:add" and row["ERRORS"] == "0", summary
    unprinted = sum(int(ln.split()[0]) for ln in lines[2:] if "events were not printed" in ln)
    # each event recorded was printed, counted as not printed, or (DROPPED) never handled
    handled = int(row["HITS"]) - int(row["LOST"]) - int(row.get("DROPPED", 0))
    assert out.lines - 1 + unprinted == handled, summary
