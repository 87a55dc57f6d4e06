"""Host-side helpers of the VM runner: progress lines, tools, subprocesses, the one error."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kuprobe.errors import KuprobeError

SETUP_HINT = "run `sh scripts/setup-vm.sh` as root to install it"


class VmError(KuprobeError):
    """The VM could not be built or booted; the message says why and what to do."""


def say(message: str) -> None:
    """One progress line on stderr, so a command's own output stays clean on stdout."""
    print(f"[vm] {message}", file=sys.stderr, flush=True)


def require_tool(name: str) -> str:
    """The path of host tool `name`, or a VmError naming the set-up script."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise VmError(f"{name} not found on this host: {SETUP_HINT}")
    return path


def run_logged(
    argv: Sequence[str],
    *,
    log: Path,
    show: Callable[[str], bool] = lambda line: False,
    env: dict[str, str] | None = None,
) -> None:
    """Run `argv`, every output line to `log`, those `show` accepts as progress.

    On failure the last lines of the log go into the VmError, so the cause is on screen.
    """
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if show(line):
                say("  " + line.rstrip())
        code = proc.wait()
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
        raise VmError(
            f"{Path(argv[0]).name} failed with status {code} (full log: {log}):\n" + "\n".join(tail)
        )


def capture(argv: Sequence[str]) -> str:
    """stdout of a quick host command; a VmError with its stderr if it fails."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise VmError(f"{argv[0]} not found on this host: {SETUP_HINT}") from exc
    if done.returncode != 0:
        raise VmError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


class Stopwatch:
    """Seconds since construction, for progress lines."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self.start

    def __str__(self) -> str:
        return f"{self.seconds():.1f} s"
