"""Kernel hazards a live user meets, each detected on the running kernel by doing it.

``nop5_fork``: Linux 6.18 optimises a uprobe on a 5-byte nop (``0f 1f 44 00 00``, the first
instruction of functions built with ``-mfentry -mnop-mcount`` and of libbpf's USDT sites):
after the first hit, arch/x86/kernel/uprobes.c rewrites the nop into a ``call`` to a
``[uprobes-trampoline]`` page it maps into the process. A process forked afterwards
inherits the rewritten text but not the trampoline mapping, so the child's first call of the
function jumps to unmapped memory and the child dies with SIGSEGV (bpftrace too: the
kernel's, not kuprobe's). Measured on 6.18.44 (x86_64).
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from kuprobe.arch import X86_64, host_arch
from kuprobe.live.tracefs import tracefs

NOP5 = bytes.fromhex("0f1f440000")
RET = b"\xc3"
HAZARD_GROUP = "kuprobe_hazard"

# The probed process: maps the file's page executable, calls its nop5 function, then forks
# and calls it again in the child; prints how the child ended.
_CHILD = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
fd = os.open(sys.argv[1], os.O_RDONLY)
addr = libc.mmap(None, 4096, 0x1 | 0x4, 0x02, fd, 0)  # PROT_READ|PROT_EXEC, MAP_PRIVATE
if addr in (None, ctypes.c_void_p(-1).value):
    print("mmap failed", flush=True)
    sys.exit(2)
func = ctypes.CFUNCTYPE(None)(addr)
print("ready", flush=True)
sys.stdin.readline()
for _ in range(3):
    func()
pid = os.fork()
if pid == 0:
    func()
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("signal" if os.WIFSIGNALED(status) else "exit",
      os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status), flush=True)
"""


@dataclass(frozen=True)
class Hazard:
    name: str
    present: bool
    detail: str
    advice: str = ""


def nop5_fork(timeout: float = 20.0) -> Hazard:
    """Probe a 5-byte nop, hit it, fork, call it in the child: does the child survive?"""
    name = "uprobe on a 5-byte nop, then fork"
    kernel = os.uname().release
    if host_arch() is not X86_64:  # the optimisation is x86's (arch/x86/kernel/uprobes.c)
        return Hazard(name, False, f"not x86_64 ({platform.machine()}): no nop5 optimisation")
    root = tracefs()
    if root is None or not (root / "uprobe_events").exists():
        return Hazard(name, False, "not checked: no tracefs uprobe_events")
    event = f"nop5_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="kuprobe-hazard-", dir="/var/tmp") as d:
        code = Path(d) / "nop5.bin"
        code.write_bytes((NOP5 + RET).ljust(4096, b"\xcc"))
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(code)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        events = root / "uprobe_events"
        armed = False
        try:
            assert proc.stdout is not None and proc.stdin is not None
            if proc.stdout.readline().strip() != "ready":
                return Hazard(name, False, "not checked: the probe target did not start")
            _write(events, f"p:{HAZARD_GROUP}/{event} {code}:0x0")
            armed = True
            (root / "events" / HAZARD_GROUP / event / "enable").write_text("1\n")
            out, _ = proc.communicate("go\n", timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            return Hazard(name, False, f"not checked: {e}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if armed:
                try:
                    (root / "events" / HAZARD_GROUP / event / "enable").write_text("0\n")
                    _write(events, f"-:{HAZARD_GROUP}/{event}")
                except OSError:
                    pass
    how = out.split()
    if how[:2] == ["signal", str(int(signal.SIGSEGV))]:
        return Hazard(
            name,
            True,
            f"kernel {kernel}: a child forked after the probe fired died with SIGSEGV",
            "do not probe a function that starts with a 5-byte nop in a program that forks "
            "(probe an instruction after it: symbol+5), or run a kernel without the optimised "
            "uprobe (before 6.18)",
        )
    return Hazard(name, False, f"kernel {kernel}: the forked child ended with {' '.join(how)}")


def _write(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # no seek: tracefs refuses it
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


def hazards() -> list[Hazard]:
    return [nop5_fork()]


def doctor_rows() -> list[tuple[str, bool, str, str]]:
    """(check, ok, found, what to do) for ``kuprobe doctor``; checked only as root."""
    if os.geteuid() != 0:
        return []
    return [(f"hazard: {h.name}", not h.present, h.detail, h.advice) for h in hazards()]
