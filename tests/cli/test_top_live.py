"""``kuprobe top`` in a real terminal: tmux runs it on the demo workload, as root.

capture-pane shows the probe rows with rising hit counts, ``q`` quits, and afterwards
nothing is left: the probed instruction is the file's again (no int3), no uprobe event is
left in tracefs and no process holds a perf event it did not hold before.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kuprobe.elf import ElfImage

from ..live.helpers import flooding, wait_until

pytestmark = pytest.mark.live
KUPROBE = Path(sys.executable).with_name("kuprobe")
TRACEFS = Path("/sys/kernel/tracing")


def perf_event_holders() -> set[int]:
    """Pids holding a perf event fd (uprobes attach as perf events)."""
    holders = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            links = [os.readlink(fd) for fd in fd_dir.iterdir()]
        except OSError:
            continue
        if "anon_inode:[perf_event]" in links:
            holders.add(int(fd_dir.parent.name))
    return holders


def code_address(pid: int, exe: Path, symbol: str) -> tuple[int, bytes] | None:
    """Where ``symbol`` is mapped in ``pid``, and its first byte in the file (None while
    ``exe`` is not mapped executable there)."""
    with ElfImage(str(exe)) as elf:
        file_off = elf.vaddr_to_offset(elf.symbol(symbol).value)
        first = elf.read(file_off, 1)
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            f = line.split()
            if len(f) >= 6 and f[5] == str(exe) and "x" in f[1]:
                start, end = (int(x, 16) for x in f[0].split("-"))
                off = int(f[2], 16)
                if off <= file_off < off + end - start:
                    return start + file_off - off, first
    return None


def read_byte(pid: int, addr: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(addr)
        return mem.read(1)


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def hits(screen: str, label: str) -> int | None:
    m = re.search(rf"^{re.escape(label)}\s+([\d,]+)\s", screen, re.MULTILINE)
    return int(m.group(1).replace(",", "")) if m else None


@pytest.fixture
def tmux_session() -> Iterator[str]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is missing (apt-get install tmux)")
    name = f"kuprobe-test-{os.getpid()}"
    yield name
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def test_top_in_tmux(live: Path, tmux_session: str, tmp_path: Path) -> None:
    exe = (live / "x86_64" / "demo").resolve()
    demo = subprocess.Popen([str(exe), "120"])
    try:
        addr, original = wait_until(
            lambda: code_address(demo.pid, exe, "demo_handle"), f"{exe} mapped in {demo.pid}"
        )
        before = perf_event_holders()
        status = tmp_path / "status"
        command = (
            f"{KUPROBE} top 'u:{exe}:demo_handle arg0' 'ur:{exe}:demo_hash' "
            f"--pid {demo.pid} --refresh 0.3; echo $? > {status}"
        )
        tmux("new-session", "-d", "-s", tmux_session, "-x", "120", "-y", "40", command)

        def screen() -> str:
            return tmux("capture-pane", "-p", "-t", tmux_session)

        first = wait_until(lambda: hits(screen(), "u:demo:demo_handle"), "hits on the screen")
        assert read_byte(demo.pid, addr) == b"\xcc"  # armed: the breakpoint is in

        def risen() -> str | None:  # a later refresh: the count goes up, returns are counted
            shown = screen()
            now, returns = hits(shown, "u:demo:demo_handle"), hits(shown, "ur:demo:demo_hash")
            return shown if now and now > first and returns else None

        shown = wait_until(risen, "the entry hits rise and returns are counted")
        assert "Top tasks" in shown and "latency entry→return" in shown
        assert f"{demo.pid}   demo" in shown

        tmux("send-keys", "-t", tmux_session, "q")
        code = wait_until(
            lambda: status.exists() and status.read_text().strip(), "kuprobe top quit on q"
        )
        assert code == "0"

        assert read_byte(demo.pid, addr) == original  # disarmed
        events = (TRACEFS / "uprobe_events").read_text() if TRACEFS.exists() else ""
        assert "kuprobe" not in events
        assert perf_event_holders() <= before
        assert demo.poll() is None  # the workload ran on, untouched
    finally:
        demo.kill()
        demo.wait()


def test_top_quits_on_q_during_a_flood(live: Path, tmux_session: str, tmp_path: Path) -> None:
    """q while a flood runs and every redraw takes longer than --refresh (1 ms here; a slow
    guest under a flood at the default 0.5 s): top quits, detaches and prints its summary
    while the flood goes on (a key used to be read only when a redraw left time to spare)."""
    exe = (live / "x86_64" / "target").resolve()
    with flooding(exe) as floods:
        status = tmp_path / "status"
        command = f"{KUPROBE} top 'u:{exe}:add' --refresh 0.001; echo $? > {status}"
        tmux("new-session", "-d", "-s", tmux_session, "-x", "120", "-y", "40", command)
        tmux("set-option", "-t", tmux_session, "remain-on-exit", "on")  # to read the summary

        def screen() -> str:
            return tmux("capture-pane", "-p", "-t", tmux_session)

        wait_until(lambda: hits(screen(), "u:target:add"), "hits on the screen")
        tmux("send-keys", "-t", tmux_session, "q")
        code = wait_until(
            lambda: status.exists() and status.read_text().strip(), "kuprobe top quit on q"
        )
        alive = [f.poll() is None for f in floods]
        final = screen()
    assert code == "0"
    assert all(alive)  # it quit during the flood, not after it
    assert "Top tasks" in final and (hits(final, "u:target:add") or 0) > 0, final  # summary
