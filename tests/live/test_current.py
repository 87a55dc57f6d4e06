"""``current()`` has the kernel's meanings: ``pid`` the thread id, ``tgid`` the process id."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from kuprobe import Uprobe, UprobeConsumer, current, register_uprobe, unregister_uprobe
from kuprobe.task import Task


def _libc() -> str:
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if "/libc.so" in path or "/libc-" in path:
            return path
    raise AssertionError("no libc mapped in this process")


@pytest.mark.live
def test_pid_is_the_thread_and_tgid_the_process(live: Path) -> None:
    seen: list[Task] = []
    up = Uprobe(
        _libc(),
        symbol_name="getppid",
        pid=os.getpid(),
        consumer=UprobeConsumer(handler=lambda uc, regs: seen.append(current()) or 0),
    )
    tids: list[int] = []

    def worker() -> None:
        tids.append(threading.get_native_id())
        os.getppid()

    register_uprobe(up)
    try:
        os.getppid()
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    finally:
        unregister_uprobe(up)
    main_tid = threading.get_native_id()
    assert [(x.pid, x.tgid) for x in seen] == [(main_tid, os.getpid()), (tids[0], os.getpid())]
    assert tids[0] != os.getpid()
