"""Stress (marked ``slow``): threads registering and unregistering under load while signals
arrive. Afterwards nothing of the process is left in the kernel (no BPF link or perf event
fd, no tracefs event, no breakpoint in the traced program) and every probe's counters add
up: hits = handled + handler_errors + lost + dropped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .helpers import Target

pytestmark = [pytest.mark.live, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable  # the interpreter running the tests (a worktree has no .venv)

SCRIPT = textwrap.dedent(
    """
    import json, os, random, signal, sys, threading, time
    from kuprobe import ProbeError, Uprobe, UprobeConsumer, register_uprobe, unregister_uprobe
    from tests.live.helpers import bpf_fds  # the child runs in the root
    exe, seconds = sys.argv[1], float(sys.argv[2])
    signal.signal(signal.SIGUSR1, lambda s, f: None)  # interrupts system calls, nothing else
    done_probes = []
    lock = threading.Lock()
    failures = []

    def probe(rng):
        handled = [0]
        def handler(uc, regs):
            if rng.random() < 0.01:
                raise ValueError("a failing handler")
            if rng.random() < 0.01:
                time.sleep(0.002)
            handled[0] += 1
            return 0
        up = Uprobe(exe, symbol_name="add", consumer=UprobeConsumer(handler=handler))
        return up, handled

    def cycle(rng):
        up, handled = probe(rng)
        try:
            register_uprobe(up)
        except ProbeError as e:
            failures.append(f"register: {e}")
            return
        finally:
            with lock:
                done_probes.append((up, handled))
        time.sleep(rng.random() * 0.05)
        try:
            unregister_uprobe(up, timeout=rng.choice([None, 0.0, 0.01, 0.3]))
        except ProbeError:
            if up.registered:
                raise  # only "not registered": a signal's shutdown came first

    # At least `seconds` and MIN_CYCLES cycles in all (a TCG guest runs few cycles a second),
    # at most 20 times `seconds`.
    MIN_CYCLES = 10
    start = time.monotonic()

    def going():
        now = time.monotonic() - start
        return now < seconds * 20 and (now < seconds or len(done_probes) < MIN_CYCLES)

    def worker(seed):
        rng = random.Random(seed)
        while going():
            try:
                cycle(rng)
            except BaseException as e:
                failures.append(f"worker: {e!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    print("ready", flush=True)
    interrupted = 0
    rng = random.Random(99)
    while True:
        try:
            if not going():
                break
            cycle(rng)
        except KeyboardInterrupt:
            interrupted += 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for t in threads:
        t.join()
    from kuprobe.live.api import backend
    b = backend()
    still = []  # what the workers left registered (a signal's shutdown raced them)
    for up, _ in done_probes:
        if up.registered:
            r = b._regs.get(id(up)) or b._closing.get(id(up))
            still.append(repr(r and (r.detached, r.final, r.dropping)))
            unregister_uprobe(up)
    b.closer.flush()  # uprobe links close in the background (kuprobe/live/closer.py)
    fds = []
    for fd, what in bpf_fds().items():
        fds.append(what)
        try:
            info = open(f"/proc/self/fdinfo/{fd}").read().replace(chr(10), " ")
        except OSError:
            info = ""
        still.append(f"fd {fd}: {info}")
    rows = [(up.hits, handled[0], up.handler_errors, up.lost, up.dropped, up.registered)
            for up, handled in done_probes]
    print(json.dumps({"interrupted": interrupted, "fds": fds, "rows": rows,
                      "failures": failures, "still": still,
                      "regs": [len(b._regs), len(b._closing)]}), flush=True)
    """
)


def test_register_unregister_under_load_and_signals(live: Path) -> None:
    exe = live / "x86_64" / "target"
    load = Target(exe, "add", 10**11, 1)  # calls add until killed
    assert load.proc.stdin is not None
    add = load.runtime_address("add")
    original = load.read_mem(add, 8)
    load.proc.stdin.write("go\n")
    load.proc.stdin.flush()
    p = subprocess.Popen(
        [PYTHON, "-c", SCRIPT, str(exe), "8"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
        t_end = time.monotonic() + 7
        n = 0
        while time.monotonic() < t_end:
            time.sleep(0.02)
            n += 1
            p.send_signal(signal.SIGINT if n % 15 == 0 else signal.SIGUSR1)
        out, err = p.communicate(timeout=200)
        after = load.read_mem(add, 8)
    finally:
        load.kill()
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["failures"] == [], result["failures"][:5]
    assert result["fds"] == [], (result["still"], result["regs"], err[-2000:])
    assert result["interrupted"] > 0
    rows = result["rows"]
    # Enough register/unregister cycles to mean something even on a loaded 2-core machine.
    assert len(rows) >= 10
    assert sum(r[0] for r in rows) > 100  # the probes fired
    for hits, handled, errors, lost, dropped, registered in rows:
        assert not registered, (result["still"], result["regs"], err[-2000:])
        assert hits == handled + errors + lost + dropped, (hits, handled, errors, lost, dropped)
    assert after == original  # no breakpoint left in the traced program
    events = Path("/sys/kernel/tracing/uprobe_events").read_text()
    assert str(exe) not in events
