"""Running the probe targets for live tests: a process that waits until its probes are armed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from kuprobe.elf import ElfImage
from kuprobe.live import perf
from kuprobe.probes import UprobeConsumer, UprobeHandler
from kuprobe.regs import PtRegs


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
    kuprobe makes (``kuprobe.live.perf.pmu_type``) finds none. Needs root there."""
    hide = ""
    if perf.pmu_type("kprobe") is not None:
        hide = f'mount -t tmpfs none "$(readlink -f {perf.PMU_DIR / "kprobe"})" && '
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide + 'exec "$@"', "sh",
         *argv],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
