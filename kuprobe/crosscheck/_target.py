"""The bundled probe target, built for each arch, and one live run of it.

``target wait FUNC N ARG`` (kuprobe/targets/target.c) prints ``ready PID``, waits for a line on
stdin, then calls ``FUNC(ARG + i)`` for ``i < N`` and prints ``FUNC N SUM``. Between the two, a
scenario arms its live probes limited to that pid, so nothing else running the same file is
counted.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from kuprobe.targets import TargetError, bundled

TIMEOUT = 60.0  # seconds for one run of the target


def target_path(arch: str) -> Path:
    """The bundled ``target`` program for ``arch`` (kuprobe/targets), built on first use."""
    return bundled(arch, "target")


class WaitingTarget:
    """One ``target wait FUNC N ARG`` process: started, stopped before it calls anything.

    Use as a context manager: leaving the block kills the process if it still runs.
    """

    def __init__(self, exe: Path, func: str, n: int, arg: int) -> None:
        self.exe = exe
        self.func = func
        self.proc = subprocess.Popen(
            [str(exe), "wait", func, str(n), str(arg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            self.kill()
            raise TargetError(f"{exe} wait {func}: expected 'ready PID', got {line!r}")
        self.pid = int(line[1])

    def go(self) -> int:
        """Let it run to the end; the sum of its calls' results."""
        out, err = self.proc.communicate("go\n", timeout=TIMEOUT)
        words = out.split()
        if self.proc.returncode != 0 or len(words) != 3 or words[0] != self.func:
            raise TargetError(
                f"{self.exe} {self.func}: exit status {self.proc.returncode}, "
                f"output {out.strip()!r} {err.strip()!r}"
            )
        return int(words[2])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def __enter__(self) -> WaitingTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
