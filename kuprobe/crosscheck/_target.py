"""The probe target of tests/targets, built for each arch, and one live run of it.

``target wait FUNC N ARG`` (tests/targets/target.c) prints ``ready PID``, waits for a line on
stdin, then calls ``FUNC(ARG + i)`` for ``i < N`` and prints ``FUNC N SUM``. Between the two, a
scenario arms its live probes limited to that pid, so nothing else running the same file is
counted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TARGETS = Path(__file__).resolve().parents[2] / "tests" / "targets"
TIMEOUT = 60.0  # seconds for one run of the target


class TargetError(RuntimeError):
    """The probe target could not be built or did not run as expected."""


def target_path(arch: str) -> Path:
    """tests/targets/build/ARCH/target, built by tests/targets/build.sh if it is missing."""
    path = TARGETS / "build" / arch / "target"
    if path.exists():
        return path
    script = TARGETS / "build.sh"
    if not script.exists():
        raise TargetError(f"{script} is missing: run kuprobe crosscheck from a kuprobe checkout")
    env = dict(os.environ, KUPROBE_TARGET_ARCHES=arch)
    done = subprocess.run([str(script)], env=env, capture_output=True, text=True)
    print(done.stdout + done.stderr, end="", file=sys.stderr)  # what it built, or why not
    if done.returncode != 0:
        raise TargetError(f"{script} failed for {arch} (exit status {done.returncode})")
    if not path.exists():
        raise TargetError(f"{script} did not build {path} (is the {arch} compiler installed?)")
    return path


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
