"""Running the probe targets for live tests: a process that waits until its probes are armed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar

from kuprobe.elf import ElfImage
from kuprobe.live import perf_event
from kuprobe.probes import UprobeConsumer, UprobeHandler
from kuprobe.regs import PtRegs

T = TypeVar("T")
# How long a test waits for an event before it fails: generous, for a loaded 2-core host or
# a qemu guest; a wait that succeeds returns as soon as its event happened.
EVENT_TIMEOUT = 60.0


def wait_until(cond: Callable[[], T | None], what: str, *, timeout: float = EVENT_TIMEOUT) -> T:
    """Poll ``cond`` until it returns something true, and return that; fail naming ``what``
    if it has not after ``timeout`` seconds. A wait for an event, never a guessed sleep."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while not (got := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    return got


class Lines:
    """A process's output stream read line by line on a thread, so a test can wait for the
    lines it needs (``wait_for``) while the process runs, then take them all (``all``)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for(
        self, cond: Callable[[list[str]], bool], what: str, *, timeout: float = EVENT_TIMEOUT
    ) -> None:
        """Until ``cond(lines so far)`` holds; fails naming ``what`` at the end of the stream
        or after ``timeout`` seconds."""
        with self._changed:
            ok = self._changed.wait_for(lambda: self._eof or cond(self._lines), timeout)
            if not ok or not cond(self._lines):
                tail = "".join(self._lines[-5:])
                end = "the output ended" if self._eof else f"not within {timeout:g} s"
                raise AssertionError(f"{end}: {what}; its last lines:\n{tail}")

    def all(self, *, timeout: float = EVENT_TIMEOUT) -> str:
        """Everything, once the stream has ended (the process exited or closed it)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the output did not end within {timeout:g} s"
        return "".join(self._lines)


class Waiting:
    """``EXE wait ARGS…``: started, prints ``ready PID``, runs when ``go()`` is called.

    ``timeout``: seconds ``go()`` waits for the run to end (the qemu guests want more).
    """

    def __init__(self, exe: Path, *args: object, timeout: float = 60.0) -> None:
        self.exe = exe
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [str(exe), "wait", *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert len(line) == 2 and line[0] == "ready", line
        self.pid = int(line[1])

    def go(self) -> str:
        """Its whole output, once it exited with status 0."""
        out, _ = self.proc.communicate("go\n", timeout=self.timeout)
        assert self.proc.returncode == 0, out
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Target(Waiting):
    """``target wait FUNC N ARG``: calls FUNC(ARG…) N times once ``go()`` is called."""

    def __init__(
        self, exe: Path, func: str, n: int, arg: int = 0, *, timeout: float = 60.0
    ) -> None:
        super().__init__(exe, func, n, arg, timeout=timeout)

    def read_mem(self, vaddr: int, size: int) -> bytes:
        """Bytes of the live process at ``vaddr`` (where an armed uprobe shows its int3)."""
        with open(f"/proc/{self.pid}/mem", "rb") as f:
            f.seek(vaddr)
            return f.read(size)

    def load_base(self) -> int:
        """Where the executable's first PT_LOAD (file offset 0) is mapped."""
        real = str(self.exe.resolve())
        with open(f"/proc/{self.pid}/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[5] == real and int(parts[2], 16) == 0:
                    return int(parts[0].split("-")[0], 16)
        raise AssertionError(f"{real} not mapped in {self.pid}")

    def runtime_address(self, symbol: str) -> int:
        with ElfImage(str(self.exe)) as elf:
            value = elf.symbols[symbol].value
            first = min(s.vaddr for s in elf.segments)
            return value - first + self.load_base() if elf.is_pie else value


def run(exe: Path, func: str, n: int, arg: int = 0) -> str:
    out = subprocess.run(
        [str(exe), func, str(n), str(arg)], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout


@contextmanager
def flooding(exe: Path, *, processes: int = 2) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``processes`` targets calling ``add`` in a loop without end (the target ``exe``), for
    the block: a uprobe on it fires far faster than its events can be printed or drawn."""
    floods = [
        subprocess.Popen([str(exe), "add", str(10**15)], stdout=subprocess.DEVNULL)
        for _ in range(processes)
    ]
    try:
        yield floods
    finally:
        for f in floods:
            f.kill()
            f.wait()


def symbol_value(exe: Path, name: str) -> int:
    with ElfImage(str(exe)) as elf:
        return elf.symbols[name].value


def file_offset_of(exe: Path, name: str) -> int:
    with ElfImage(str(exe)) as elf:
        return elf.vaddr_to_offset(elf.symbols[name].value)


def counting(calls: list[int]) -> UprobeHandler:
    """A uprobe handler that appends 1 to ``calls`` per event."""

    def handler(uc: UprobeConsumer, regs: PtRegs) -> int:
        calls.append(1)
        return 0

    return handler


KUPROBE = Path(sys.executable).with_name("kuprobe")  # the command of this venv


def start_trace(*args: str, probes: int) -> subprocess.Popen[str]:
    """``kuprobe trace ARGS`` in the background, returned once it says its ``probes`` probes
    are registered (so that nothing the caller does next is missed)."""
    trace = subprocess.Popen(
        [str(KUPROBE), "trace", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert trace.stderr is not None
    line = trace.stderr.readline()
    assert line.startswith(f"Tracing {probes} probe(s)"), line + trace.stderr.read()
    return trace


def trace_until(
    *args: str, probes: int, enough: Callable[[list[str]], bool], what: str
) -> subprocess.CompletedProcess[str]:
    """``kuprobe trace ARGS``, stopped with Ctrl-C once the lines it printed satisfy
    ``enough`` (what the test needs, ``what`` in words): everything it printed after the
    registration, and its exit status."""
    trace = start_trace(*args, probes=probes)
    assert trace.stdout is not None and trace.stderr is not None
    out, err = Lines(trace.stdout), Lines(trace.stderr)
    try:
        out.wait_for(enough, what)
        trace.send_signal(signal.SIGINT)
        trace.wait(timeout=EVENT_TIMEOUT)
    finally:
        if trace.poll() is None:
            trace.kill()
            trace.wait()
    return subprocess.CompletedProcess(trace.args, trace.returncode, out.all(), err.all())


def trace_while(t: Waiting, *args: str, probes: int) -> tuple[str, str]:
    """``kuprobe trace ARGS --pid PID`` on the waiting ``t`` while ``t`` runs, stopped with
    Ctrl-C after: ``t``'s output and the trace's (which exited 0)."""
    try:
        trace = start_trace(*args, "--pid", str(t.pid), probes=probes)
    except BaseException:
        t.kill()
        raise
    try:
        ran = t.go()
    finally:  # the trace stops even when the target failed
        t.kill()
        trace.send_signal(signal.SIGINT)
        try:
            out, err = trace.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            trace.kill()
            trace.communicate()
            raise
    assert trace.returncode == 0, err
    return ran, out


def trace(*args: str) -> subprocess.CompletedProcess[str]:
    """``kuprobe trace ARGS`` run to its end (``-d SECONDS`` bounds it), its output captured."""
    return subprocess.run(
        [str(KUPROBE), "trace", *args], capture_output=True, text=True, timeout=60
    )


def bpf_fds(pid: int | str = "self") -> dict[int, str]:
    """The BPF links and perf events a process holds open (each one a live attachment), by fd.

    The child scripts of test_faults and test_stress import it too (they run in the root)."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            what = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if what in ("anon_inode:bpf_link", "anon_inode:[perf_event]"):
            out[int(fd)] = what
    return out


def without_kprobes(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``argv`` as on a kernel built without kprobes: where this kernel has them, in a mount
    namespace of its own with a tmpfs over the kprobe PMU's sysfs directory, so the lookup
    kuprobe makes (``kuprobe.live.perf_event.pmu_type``) finds none. Needs root there."""
    hide = ""
    if perf_event.pmu_type("kprobe") is not None:
        hide = f'mount -t tmpfs none "$(readlink -f {perf_event.PMU_DIR / "kprobe"})" && '
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide + 'exec "$@"', "sh",
         *argv],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
