"""The scenarios' program, built for each arch, and one live run of it.

``scenarios wait FUNC:A:B …`` (kuprobe/targets/scenarios.c) prints ``ready PID``, waits for a
line on stdin, then makes each call in order and prints ``FUNC RESULT`` for each. Between the
two, a scenario arms its live probes limited to that pid, so nothing else running the same file
is counted.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from kuprobe.targets import TargetError, bundled

TIMEOUT = 60.0  # seconds for one run of the program


def target_path(arch: str, program: str = "scenarios") -> Path:
    """The bundled ``program`` for ``arch`` (kuprobe/targets), built on first use."""
    return bundled(arch, program)


class WaitingTarget:
    """One ``PROGRAM wait CALL…`` process: started, stopped before it calls anything.

    Use as a context manager: leaving the block kills the process if it still runs.
    """

    def __init__(self, exe: Path, calls: Sequence[str]) -> None:
        self.exe = exe
        self.calls = list(calls)
        self.proc = subprocess.Popen(
            [str(exe), "wait", *self.calls],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            self.kill()
            raise TargetError(f"{exe} wait: expected 'ready PID', got {line!r}")
        self.pid = int(line[1])

    def go(self) -> list[int]:
        """Let it run to the end; each call's result."""
        out, err = self.proc.communicate("go\n", timeout=TIMEOUT)
        lines = [ln.split() for ln in out.splitlines()]
        funcs = [c.split(":")[0] for c in self.calls]
        if (
            self.proc.returncode != 0
            or len(lines) != len(funcs)
            or any(len(w) != 2 or w[0] != f for w, f in zip(lines, funcs, strict=True))
        ):
            raise TargetError(
                f"{self.exe}: exit status {self.proc.returncode}, "
                f"output {out.strip()!r} {err.strip()!r}"
            )
        return [int(w[1]) for w in lines]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def __enter__(self) -> WaitingTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
