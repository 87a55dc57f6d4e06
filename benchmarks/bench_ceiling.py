"""The delivery ceiling: kuprobe beside raw BCC, in one run, until something loses.

    sudo .venv/bin/python benchmarks/bench_ceiling.py [--quick]

A producer program (benchmarks/ceiling_target.c) runs THREADS threads that together call a
probed function at a set rate for a while; the rate grows by √2 each step. For each step and
each peer it prints the events/s offered (calls the program made, per second), delivered
(handled by a Python handler, per second of the run and its drain) and lost, and checks that
every hit is accounted for: kuprobe's ``hits == handled + handler_errors + lost + dropped``;
raw BCC counts its own losses (BCC reports none), with a counter beside its ring buffer.
Then ``kuprobe top``'s dashboard runs on the same probe at the rate where kuprobe first lost
(or the highest offered): how late each refresh is against its period, and whether its hit
count equals the calls made.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kuprobe import Uprobe, UprobeConsumer, register_uprobe, unregister_uprobe  # noqa: E402
from kuprobe.live.api import backend  # noqa: E402

BUILD = ROOT / "benchmarks" / "build"
EXE = BUILD / "ceiling_target"
SYM = "ceil_hit"
THREADS = 4
REFRESH = 0.25  # the dashboard's period in the top run


def build() -> None:
    BUILD.mkdir(exist_ok=True)
    src = ROOT / "benchmarks" / "ceiling_target.c"
    if not EXE.exists() or EXE.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(EXE), str(src)], check=True)


class Producer:
    """ceiling_target waiting on stdin; ``go()`` starts it, ``finish()`` -> (calls, seconds)."""

    def __init__(self, rate: float, seconds: float) -> None:
        self.p = subprocess.Popen(
            [str(EXE), "wait", str(THREADS), str(rate), str(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.p.stdout is not None and self.p.stdout.readline().startswith("ready")

    def go(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write("go\n")
        self.p.stdin.flush()

    def finish(self) -> tuple[int, float]:
        out, _ = self.p.communicate(timeout=300)
        calls, secs = out.split()
        return int(calls), float(secs)


@dataclass
class Step:
    peer: str
    offered: float  # events/s the program produced
    delivered: float  # events/s handled in Python, over the run and its drain
    calls: int
    handled: int
    lost: int
    accounted: bool  # every hit is handled or counted lost (or dropped)

    def line(self) -> str:
        ok = "ok" if self.accounted else "UNACCOUNTED"
        return (
            f"  {self.peer:<8} offered {self.offered / 1e6:6.3f} M/s  delivered "
            f"{self.delivered / 1e6:6.3f} M/s  lost {self.lost:>9,} of {self.calls:>10,}  {ok}"
        )


def step_kuprobe(rate: float, seconds: float) -> Step:
    handled = [0]

    def handler(uc: UprobeConsumer, regs: object) -> int:
        handled[0] += 1
        return 0

    up = Uprobe(str(EXE), symbol_name=SYM, consumer=UprobeConsumer(handler=handler))
    prod = Producer(rate, seconds)
    register_uprobe(up)
    t0 = time.perf_counter()
    prod.go()
    calls, secs = prod.finish()
    unregister_uprobe(up)  # returns once every recorded event is handled
    dt = time.perf_counter() - t0
    accounted = up.hits == calls == handled[0] + up.handler_errors + up.lost + up.dropped
    return Step("kuprobe", calls / secs, handled[0] / dt, calls, handled[0], up.lost, accounted)


BCC_CEILING = r"""
#include <uapi/linux/ptrace.h>
struct event { u32 slot, flags; u64 ts, ip, pid_tgid; char comm[16]; u64 regs[21]; u8 stack[128]; };
BPF_RINGBUF_OUTPUT(events, 4096); /* kuprobe's pool has 4096 pages too */
BPF_PERCPU_ARRAY(stats, u64, 2);  /* hits, lost: BCC counts neither itself */
int on_hit(struct pt_regs *ctx) {
    int k = 0;
    u64 *hits = stats.lookup(&k);
    if (hits) (*hits)++;
    struct event *e = events.ringbuf_reserve(sizeof(*e));
    if (!e) {
        k = 1;
        u64 *lost = stats.lookup(&k);
        if (lost) (*lost)++;
        return 0;
    }
    e->ts = bpf_ktime_get_ns();
    e->pid_tgid = bpf_get_current_pid_tgid();
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    bpf_probe_read_kernel(e->regs, sizeof(e->regs), ctx);
    bpf_probe_read_user(e->stack, sizeof(e->stack), (void *)PT_REGS_SP(ctx));
    events.ringbuf_submit(e, 0);
    return 0;
}
"""


class RawBcc:
    """Raw BCC's documented way: a ring buffer, one ctypes callback per event, polled."""

    def __init__(self) -> None:
        from bcc import BPF

        self.b: Any = BPF(text=BCC_CEILING)
        self.got = 0
        self._events = self.b["events"]
        self._events.open_ring_buffer(self._cb)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _cb(self, ctx: object, data: object, size: int) -> int:
        self._events.event(data)  # the event decoded, as kuprobe hands its handlers theirs
        self.got += 1
        return 0

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.b.ring_buffer_poll(50)

    def stats(self) -> tuple[int, int]:
        vals = self.b["stats"]
        return sum(vals[0]), sum(vals[1])

    def step(self, rate: float, seconds: float) -> Step:
        hits0, lost0 = self.stats()
        got0 = self.got
        prod = Producer(rate, seconds)
        # kuprobe's last link at this place may still be closing in the background: a uprobe
        # made meanwhile at the same place can fail with EINVAL (measured here, 6.18).
        backend().closer.flush()
        self.b.attach_uprobe(name=str(EXE), sym=SYM, fn_name="on_hit")
        t0 = time.perf_counter()
        prod.go()
        calls, secs = prod.finish()
        hits, lost = (x - y for x, y in zip(self.stats(), (hits0, lost0), strict=True))
        deadline = time.monotonic() + 60
        while self.got - got0 + lost < hits and time.monotonic() < deadline:
            time.sleep(0.001)  # until every event is handled (or counted lost)
        dt = time.perf_counter() - t0
        self.b.detach_uprobe(name=str(EXE), sym=SYM)
        handled = self.got - got0
        return Step("raw BCC", calls / secs, handled / dt, calls, handled, lost, hits == calls)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.b.cleanup()


def top_at(rate: float, seconds: float) -> None:
    """``kuprobe top``'s dashboard (the same Session and dashboard_loop.run) on the probe at
    ``rate``: refresh lateness and the exactness of its hit count."""
    from rich.console import Console

    from kuprobe.cli import dashboard_loop
    from kuprobe.cli.session import Session, Watch
    from kuprobe.cli.spec import parse_spec

    session = Session([Watch(parse_spec(f"u:{EXE}:{SYM}"))])
    console = Console(force_terminal=True, file=io.StringIO(), width=120, height=40)
    prod = Producer(rate, seconds)
    with session.active():
        threading.Timer(0.5, prod.go).start()
        state = dashboard_loop.run(
            session,
            console=console,
            refresh=REFRESH,
            duration=seconds + 1.5,
            stdin=io.StringIO(),
        )
        calls, secs = prod.finish()
    final = session.sample().probes[0]
    redraws = list(state.redraws)
    late = [max(0.0, (b - a) - REFRESH) for a, b in itertools.pairwise(redraws)]
    print(
        f"  kuprobe top at {calls / secs / 1e6:.3f} M/s offered, refresh every {REFRESH} s: "
        f"{len(redraws)} redraws, late by median {statistics.median(late or [0]) * 1e3:.1f} ms, "
        f"max {max(late or [0]) * 1e3:.1f} ms"
    )
    exact = "exact" if final.hits == calls else f"NOT exact ({final.hits:,})"
    print(
        f"  top's hit count {final.hits:,} for {calls:,} calls: {exact}; lost {final.lost:,}, "
        f"dropped {final.dropped:,}"
    )


def ceiling(*, quick: bool = False) -> None:
    build()
    from kuprobe.live.bcc import prepare_env

    prepare_env()  # raw BCC needs the same headers tree (BCC_KERNEL_SOURCE)
    seconds = 0.5 if quick else 1.0
    rates = [round(100_000 * 2 ** (i / 2)) for i in range(16)]  # 0.1 .. 18 M/s asked, x1.41
    backend()
    step_kuprobe(1000, 0.1)  # the pool's compile, outside the measurements
    raw = RawBcc()
    first_loss: dict[str, float] = {}
    highest = 0.0
    print(f"5. delivery ceiling: {THREADS} producer threads, {seconds} s per step")
    try:
        for rate in rates:
            print(f" asked {rate / 1e6:.3f} M/s")
            for s in (step_kuprobe(rate, seconds), raw.step(rate, seconds)):
                print(s.line())
                highest = max(highest, s.offered)
                if s.lost and s.peer not in first_loss:
                    first_loss[s.peer] = s.offered
            if len(first_loss) == 2:
                break
    finally:
        raw.close()
    for peer in ("kuprobe", "raw BCC"):
        at = first_loss.get(peer)
        where = f"from {at / 1e6:.3f} M/s offered" if at else f"never, up to {highest / 1e6:.3f}"
        print(f"  {peer} starts losing {where}")
    if "kuprobe" in first_loss and "raw BCC" in first_loss:
        ratio = first_loss["kuprobe"] / first_loss["raw BCC"]
        print(f"  ceiling kuprobe / raw BCC: {ratio:.2f}x")
    top_at(first_loss.get("kuprobe", highest), seconds * 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter steps")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("benchmarks need root (live probes)", file=sys.stderr)
        return 1
    ceiling(quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
