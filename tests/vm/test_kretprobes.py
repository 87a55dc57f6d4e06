"""A kretprobe whose maxactive is smaller than the calls in flight: the kernel's nmissed."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from kuprobe import Kretprobe, KretprobeInstance, PtRegs, register_kretprobe, unregister_kretprobe

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("no_leftovers")]

# fs/pipe.c: a read of an empty pipe sleeps inside pipe_read() until a writer comes. (Not
# do_nanosleep: kuprobe's own dispatcher thread sleeps between polls.)
SLEEPY = "pipe_read"
THREADS = 6
MAXACTIVE = 2


def _wchan(tid: int) -> str:
    try:
        return Path(f"/proc/self/task/{tid}/wchan").read_text()
    except OSError:
        return ""


def test_maxactive_smaller_than_concurrent_activations_counts_nmissed() -> None:
    returned: list[int] = []

    def handler(ri: KretprobeInstance, regs: PtRegs) -> int:
        returned.append(ri.task.pid if ri.task else -1)
        return 0

    rp = Kretprobe(symbol_name=SLEEPY, handler=handler, maxactive=MAXACTIVE)
    pipes = [os.pipe() for _ in range(THREADS)]
    tids: list[int] = []
    lock = threading.Lock()

    def reader(fd: int) -> None:
        with lock:
            tids.append(threading.get_native_id())
        os.read(fd, 1)

    register_kretprobe(rp)
    threads = [threading.Thread(target=reader, args=(r,)) for r, _w in pipes]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every reader asleep inside pipe_read()
            with lock:
                asleep = len(tids) == THREADS and all(_wchan(t) == SLEEPY for t in tids)
            if asleep:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"readers not all asleep in {SLEEPY}: {[_wchan(t) for t in tids]}")
        for _r, w in pipes:
            os.write(w, b"x")
        for t in threads:
            t.join(30)
    finally:
        unregister_kretprobe(rp)
        for r, w in pipes:
            os.close(r)
            os.close(w)
    assert rp.hits == MAXACTIVE
    assert rp.nmissed == THREADS - MAXACTIVE
    assert len(returned) == MAXACTIVE and set(returned) <= set(tids)
