"""Live uprobe benchmarks: kuprobe beside raw BCC, bpftrace and no probe, in one run.

    sudo .venv/bin/python benchmarks/bench_live.py [--quick]

Prints, for each measure, kuprobe's figure, its peers' and the ratio:
  1. per-hit overhead of a count-only uprobe (ns added per probed call), on a nop5 entry
     (the kernel optimises it) and a push %rbp entry (the kernel emulates it);
  2. events/s delivered to a trivial Python handler, and how many were lost;
  3. time to arm 20 uprobes from a fresh process (compile included) and to remove them, and
     how kuprobe's compile saw the file system (its private view skips BCC's kallsyms read);
  4. bounded stops: 2,000 events queued for a 0.1 s handler (200 s of handling), removed by
     ``unregister_uprobe(up, timeout=0.5)``, by interpreter exit and by SIGINT (kuprobe only;
     ``--stops`` runs this part alone);
  5. the delivery ceiling beside raw BCC's, and ``kuprobe top``'s refresh delay at that rate
     (benchmarks/bench_ceiling.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from kuprobe import Uprobe, UprobeConsumer, register_uprobe, unregister_uprobe  # noqa: E402
from kuprobe.elf import ElfImage  # noqa: E402
from kuprobe.insn import boundaries  # noqa: E402
from kuprobe.live.api import backend  # noqa: E402

BUILD = ROOT / "benchmarks" / "build"
EXE = BUILD / "bench_target"
SYM = {"nop5": "bench_nop5", "push": "bench_push"}


def build() -> None:
    BUILD.mkdir(exist_ok=True)
    src = ROOT / "benchmarks" / "bench_target.c"
    if not EXE.exists() or EXE.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-o", str(EXE), str(src)], check=True)


def workload(kind: str, n: int) -> float:
    """ns per call of the workload, as it measures itself."""
    out = subprocess.run([str(EXE), kind, str(n)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0])


# --- 1. per-hit overhead -------------------------------------------------------------

BCC_COUNT = r"""
BPF_PERCPU_ARRAY(counts, u64, 1);
int count(struct pt_regs *ctx) {
    int k = 0;
    u64 *v = counts.lookup(&k);
    if (v) (*v)++;
    return 0;
}
"""


def per_hit_kuprobe(kind: str, n: int) -> float:
    up = Uprobe(str(EXE), symbol_name=SYM[kind])
    register_uprobe(up)
    try:
        ns = workload(kind, n)
    finally:
        unregister_uprobe(up)
    assert up.hits == n, (up.hits, n)
    return ns


def per_hit_bcc(bpf_cls: type, kind: str, n: int) -> float:
    backend().closer.flush()  # kuprobe's last link there closes first (see bench_ceiling.py)
    b = bpf_cls(text=BCC_COUNT)
    b.attach_uprobe(name=str(EXE), sym=SYM[kind], fn_name="count")
    try:
        return workload(kind, n)
    finally:
        b.cleanup()


def _wait_attaching(p: subprocess.Popen[str]) -> None:
    """Read bpftrace's output up to its "Attaching N probes..." line."""
    assert p.stdout is not None
    seen = []
    for line in p.stdout:
        if "Attaching" in line:
            return
        seen.append(line)
    raise RuntimeError("bpftrace: " + "".join(seen))


def _stop(p: subprocess.Popen[str]) -> None:
    """SIGINT, as a user stops bpftrace; SIGKILL if it has not left after 30 s."""
    p.send_signal(2)
    try:
        p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()


def per_hit_bpftrace(kind: str, n: int) -> float:
    prog = f"uprobe:{EXE}:{SYM[kind]} {{ @c = count(); }}"
    p = subprocess.Popen(
        ["bpftrace", "-e", prog], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    _wait_attaching(p)
    time.sleep(0.2)
    try:
        return workload(kind, n)
    finally:
        _stop(p)


# --- 2. events delivered to Python ---------------------------------------------------


def _target_waiting(kind: str, n: int) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [str(EXE), "wait", kind, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and p.stdout.readline().startswith("ready")
    return p


def events_kuprobe(n: int) -> tuple[float, int, int]:
    got = [0]

    def handler(uc: UprobeConsumer, regs: object) -> int:
        got[0] += 1
        return 0

    up = Uprobe(str(EXE), symbol_name="bench_nop5", consumer=UprobeConsumer(handler=handler))
    p = _target_waiting("nop5", n)
    register_uprobe(up)
    t0 = time.perf_counter()
    p.communicate("go\n", timeout=120)
    while got[0] + up.lost < n:  # until every event is handled (or counted lost)
        time.sleep(0.001)
    dt = time.perf_counter() - t0
    unregister_uprobe(up)
    return got[0] / dt, got[0], up.lost


BCC_EVENTS = r"""
#include <uapi/linux/ptrace.h>
struct event { u32 slot, flags; u64 ts, ip, pid_tgid; char comm[16]; u64 regs[21]; u8 stack[128]; };
BPF_RINGBUF_OUTPUT(events, 1024);
int on_hit(struct pt_regs *ctx) {
    struct event *e = events.ringbuf_reserve(sizeof(*e));
    if (!e) return 0;
    e->ts = bpf_ktime_get_ns();
    e->pid_tgid = bpf_get_current_pid_tgid();
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    bpf_probe_read_kernel(e->regs, sizeof(e->regs), ctx);
    bpf_probe_read_user(e->stack, sizeof(e->stack), (void *)PT_REGS_SP(ctx));
    events.ringbuf_submit(e, 0);
    return 0;
}
"""


def events_bcc(bpf_cls: type, n: int) -> tuple[float, int, int]:
    """Raw BCC's documented way: a ring buffer, one ctypes callback per event."""
    b = bpf_cls(text=BCC_EVENTS)
    b.attach_uprobe(name=str(EXE), sym="bench_nop5", fn_name="on_hit")
    got = [0]

    def cb(ctx: object, data: object, size: int) -> int:
        b["events"].event(data)
        got[0] += 1
        return 0

    b["events"].open_ring_buffer(cb)
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            b.ring_buffer_poll(50)

    th = threading.Thread(target=poll)
    p = _target_waiting("nop5", n)
    th.start()
    t0 = time.perf_counter()
    p.communicate("go\n", timeout=120)
    last, idle = -1, 0
    while idle < 5:  # until nothing more arrives for 0.25 s
        time.sleep(0.05)
        idle = idle + 1 if got[0] == last else 0
        last = got[0]
    dt = time.perf_counter() - t0 - 0.25
    stop.set()
    th.join()
    b.cleanup()
    return got[0] / dt, got[0], n - got[0]  # BCC reports no losses: count them ourselves


# --- 3. arm / remove 20 probes -------------------------------------------------------


def twenty_offsets() -> list[tuple[str, int]]:
    """20 instruction boundaries spread over tests/targets' functions."""
    exe = ROOT / "tests/targets/build/x86_64/target"
    out: list[tuple[str, int]] = []
    with ElfImage(str(exe)) as elf:
        for name in ("calls", "loop_sum", "table_sum", "sw", "fib", "rec", "midpoint"):
            sym = elf.symbols[name]
            code = elf.read_vaddr(sym.value, sym.size)
            out += [(name, off) for off, _ in list(boundaries("x86_64", code))[:3]]
    return out[:20]


# Both arm scripts time from before BCC is imported (kuprobe imports it on first register).
ARM_SCRIPT = """
import resource, sys, time
sys.path.insert(0, {root!r})
from kuprobe import Uprobe, UprobeConsumer, register_uprobe, unregister_uprobe
from kuprobe.live.api import unregister_uprobes
probes = [Uprobe({exe!r}, symbol_name=s, offset=o,
                 consumer=UprobeConsumer(handler=lambda uc, r: 0)) for s, o in {offs!r}]
c1 = resource.getrusage(resource.RUSAGE_SELF)
t1 = time.perf_counter()
for p in probes:
    register_uprobe(p)
t2 = time.perf_counter()
c2 = resource.getrusage(resource.RUSAGE_SELF)
if {batch!r}:
    unregister_uprobes(probes)
else:
    for p in probes:
        unregister_uprobe(p)
t3 = time.perf_counter()
print(t2 - t1, t3 - t2, c2.ru_utime - c1.ru_utime + c2.ru_stime - c1.ru_stime)
"""

# What `kuprobe trace/top/demo` do on Ctrl-C: Session.unregister() (one batch), against the
# same 20 watches removed one by one.
SESSION_SCRIPT = """
import resource, sys, time
sys.path.insert(0, {root!r})
from kuprobe.cli.session import Session, Watch
from kuprobe.cli.spec import parse_spec
from kuprobe.live.api import backend
s = Session([Watch(parse_spec("u:%s:%s+%d" % ({exe!r}, n, o))) for n, o in {offs!r}])
c1 = resource.getrusage(resource.RUSAGE_SELF)
t1 = time.perf_counter()
s.register()
t2 = time.perf_counter()
c2 = resource.getrusage(resource.RUSAGE_SELF)
if {batch!r}:
    s.unregister()
else:
    for w in reversed(s.watches):
        backend().unregister_uprobe(w.probe)
t3 = time.perf_counter()
print(t2 - t1, t3 - t2, c2.ru_utime - c1.ru_utime + c2.ru_stime - c1.ru_stime)
"""

BCC_ARM_SCRIPT = """
import resource, sys, time
offs = {offs!r}
text = "".join("int f%d(struct pt_regs *ctx) {{ return 0; }}\\n" % i for i in range(len(offs)))
c1 = resource.getrusage(resource.RUSAGE_SELF)
t1 = time.perf_counter()
from bcc import BPF
b = BPF(text=text)
for i, (s, o) in enumerate(offs):
    b.attach_uprobe(name={exe!r}, sym=s, sym_off=o, fn_name="f%d" % i)
t2 = time.perf_counter()
c2 = resource.getrusage(resource.RUSAGE_SELF)
b.cleanup()
t3 = time.perf_counter()
print(t2 - t1, t3 - t2, c2.ru_utime - c1.ru_utime + c2.ru_stime - c1.ru_stime)
"""


def arm_remove(script: str, **kw: object) -> tuple[float, float, float]:
    """(seconds to arm, seconds to remove, CPU seconds the process spent arming, its threads
    included): wall time is what a user waits, CPU time the steadier figure on a busy machine."""
    exe = str(ROOT / "tests/targets/build/x86_64/target")
    code = script.format(root=str(ROOT), exe=exe, offs=twenty_offsets(), **kw)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    a, r, c = out.stdout.split()
    return float(a), float(r), float(c)


def arm_remove_bpftrace() -> tuple[float, float]:
    exe = ROOT / "tests/targets/build/x86_64/target"
    prog = " ".join(f"uprobe:{exe}:{s}+{o} {{ @[probe] = count(); }}" for s, o in twenty_offsets())
    t1 = time.perf_counter()
    p = subprocess.Popen(
        ["bpftrace", "-e", prog], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    _wait_attaching(p)
    # bpftrace prints "Attaching N probes..." before attaching: wait until all are armed
    target = subprocess.run(["pgrep", "-n", "bpftrace"], capture_output=True, text=True)
    while len(os.listdir(f"/proc/{p.pid}/fd")) < 20 + 10:
        if p.poll() is not None:  # bpftrace refused a probe (and its /proc fd list is empty)
            out = p.stdout.read() if p.stdout is not None else ""
            raise RuntimeError(out.strip().splitlines()[-1] if out.strip() else "bpftrace exited")
        time.sleep(0.005)
    t2 = time.perf_counter()
    del target
    _stop(p)
    t3 = time.perf_counter()
    return t2 - t1, t3 - t2


# --- report ---------------------------------------------------------------------------


STOP_SCRIPT = """
import subprocess, sys, time
sys.path.insert(0, {root!r})
from kuprobe import Uprobe, UprobeConsumer, register_uprobe
def slow(uc, regs):
    time.sleep(0.1)
    return 0
up = Uprobe({exe!r}, symbol_name="bench_push", consumer=UprobeConsumer(handler=slow))
register_uprobe(up)
subprocess.run([{exe!r}, "push", "2000"], check=True, capture_output=True)
print("queued", flush=True)
if sys.argv[1] == "SIGINT":
    time.sleep(60)
"""


def bounded_stops() -> None:
    print("4. bounded stops: 2,000 events queued for a 0.1 s handler")
    calls = [0]

    def slow(uc: UprobeConsumer, regs: object) -> int:
        calls[0] += 1
        time.sleep(0.1)
        return 0

    up = Uprobe(str(EXE), symbol_name="bench_push", consumer=UprobeConsumer(handler=slow))
    register_uprobe(up)
    subprocess.run([str(EXE), "push", "2000"], check=True, capture_output=True)
    t0 = time.perf_counter()
    unregister_uprobe(up, timeout=0.5)
    dt = time.perf_counter() - t0
    print(
        f"  unregister_uprobe(timeout=0.5): {dt:.2f} s; {calls[0]} handled, {up.dropped} "
        f"dropped, hits {up.hits}"
    )
    script = STOP_SCRIPT.format(root=str(ROOT), exe=str(EXE))
    for how in ("exit", "SIGINT"):
        p = subprocess.Popen(
            [sys.executable, "-c", script, how], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert p.stdout is not None and p.stdout.readline().strip() == b"queued"
        t0 = time.perf_counter()
        if how == "SIGINT":
            p.send_signal(signal.SIGINT)
        p.communicate(timeout=600)
        print(f"  {how} with the events queued: {time.perf_counter() - t0:.2f} s")


def row(name: str, ours: float, peer: float, unit: str, better: str = "lower") -> None:
    ratio = ours / peer if peer else float("nan")
    print(f"  {name:<44} kuprobe {ours:10.3f} {unit:<8} peer {peer:10.3f}   ratio {ratio:5.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    ap.add_argument("--stops", action="store_true", help="only the bounded stops (part 4)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("benchmarks need root (live probes)", file=sys.stderr)
        return 1
    build()
    if args.stops:
        bounded_stops()
        return 0
    from kuprobe.live import bcc as live_bcc

    live_bcc.prepare_env()  # raw BCC and bpftrace need the same headers tree (BCC_KERNEL_SOURCE)
    from bcc import BPF

    n = 300_000 if args.quick else 2_000_000
    runs = 3 if args.quick else 5
    have_bpftrace = shutil.which("bpftrace") is not None
    backend()  # warm the pool's compile outside the measurements
    per_hit_kuprobe("nop5", 1000)

    print(f"1. per-hit overhead of a count-only uprobe ({n:,} calls, median of {runs} rounds)")
    for kind in ("nop5", "push"):
        peers: dict[str, Callable[[], float]] = {
            "none": partial(workload, kind, n),
            "kuprobe": partial(per_hit_kuprobe, kind, n),
            "bcc": partial(per_hit_bcc, BPF, kind, n),
        }
        if have_bpftrace:
            peers["bpftrace"] = partial(per_hit_bpftrace, kind, n)
        got: dict[str, list[float]] = {name: [] for name in peers}
        for _ in range(runs):  # one of each per round, so drift in the machine hits all alike
            for name, f in peers.items():
                got[name].append(f())
        med = {name: statistics.median(v) for name, v in got.items()}
        base = med["none"]
        print(f"  {kind} entry: no probe {base:.1f} ns/call")
        row(f"{kind}: ns added per hit vs raw BCC", med["kuprobe"] - base, med["bcc"] - base, "ns")
        if have_bpftrace:
            row(
                f"{kind}: ns added per hit vs bpftrace",
                med["kuprobe"] - base,
                med["bpftrace"] - base,
                "ns",
            )

    m = 1_000_000 if args.quick else 4_000_000
    print(f"2. events delivered to a trivial Python handler ({m:,} events)")
    rate, handled, lost = events_kuprobe(m)
    brate, bgot, blost = events_bcc(BPF, m)
    row("events/s handled (higher is better)", rate / 1e6, brate / 1e6, "M/s")
    print(f"  kuprobe: {handled:,} handled, {lost:,} lost (reported)")
    print(f"  raw BCC: {bgot:,} handled, {blost:,} lost (BCC reports none of them)")

    print(f"3. arm and remove 20 uprobes, fresh process (median of {runs}, taken in turn)")
    # How kuprobe's compile saw the file system (kuprobe/live/bcc.py): "private" skips BCC's
    # read of /proc/kallsyms, which raw BCC pays on every compile.
    print(f"  kuprobe's compile view: {live_bcc.last_view}")
    ours, batch, bcc20 = [], [], []
    for _ in range(runs):  # in turn, so drift in the machine hits all alike
        ours.append(arm_remove(ARM_SCRIPT, batch=False))
        bcc20.append(arm_remove(BCC_ARM_SCRIPT))
        batch.append(arm_remove(ARM_SCRIPT, batch=True))

    def mid(runs_: list[tuple[float, float, float]], i: int) -> float:
        return statistics.median(r[i] for r in runs_)

    arm, rem, rem_b = mid(ours, 0), mid(ours, 1), mid(batch, 1)
    row("arm 20 (s) vs raw BCC (one module)", arm, mid(bcc20, 0), "s")
    row("arm 20, CPU time (s) vs raw BCC", mid(ours, 2), mid(bcc20, 2), "s")
    row("remove 20 one by one (s) vs raw BCC", rem, mid(bcc20, 1), "s")
    row("remove 20 batched (s) vs raw BCC", rem_b, mid(bcc20, 1), "s")
    row("remove 20 batched (s) vs one by one", rem_b, rem, "s")
    s_one = statistics.median(arm_remove(SESSION_SCRIPT, batch=False)[1] for _ in range(3))
    s_batch = statistics.median(arm_remove(SESSION_SCRIPT, batch=True)[1] for _ in range(3))
    row("trace/top: Session.unregister 20 vs one by one", s_batch, s_one, "s")
    if have_bpftrace:
        try:
            bt = [arm_remove_bpftrace() for _ in range(3)]
        except RuntimeError as e:
            print(f"  bpftrace could not arm the 20: {e}")
        else:
            row("arm 20 (s) vs bpftrace", arm, statistics.median(a for a, _ in bt), "s")
            bt_rem = statistics.median(r for _, r in bt)
            row("remove 20 one by one (s) vs bpftrace", rem, bt_rem, "s")
    bounded_stops()
    from bench_ceiling import ceiling  # part 5, also `benchmarks/bench_ceiling.py` alone

    ceiling(quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
