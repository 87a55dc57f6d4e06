"""Running one set of probes on each side: the reference model, then the live kernel.

A scenario makes two sets of probe objects of the same description (an object is registered
with one backend at a time) and hands each set here with the same calls (``Job``s). Both
sides leave nothing registered behind, whatever fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from kuprobe.backend import Backend
from kuprobe.crosscheck._target import WaitingTarget
from kuprobe.probes import Uprobe
from kuprobe.regs import PtRegs, signed, user_argument


@dataclass(frozen=True)
class Job:
    """``target FUNC N ARG``: FUNC called N times, with ARG, ARG + 1, …"""

    func: str
    n: int
    arg: int

    @property
    def label(self) -> str:
        last = self.arg + self.n - 1
        args = f"{self.arg}..{last}" if self.n > 1 else str(self.arg)
        return f"{self.func}({args})"


def call_args(func: str, a: int) -> tuple[int, ...]:
    """The arguments tests/targets/target.c's call() passes to FUNC for ``a``."""
    return (a, 2 * a) if func == "add" else (a,)


def user_arg(regs: PtRegs, n: int) -> int:
    """Argument ``n`` (0-based) of a user function at its entry, signed, per the user ABI."""
    return signed(user_argument(regs, n), regs.info.bits)


def word(regs: PtRegs, value: int) -> int:
    """A register's raw value, signed at the arch's word size."""
    return signed(value, regs.info.bits)


def run_model(exe: Path, probes: Sequence[Uprobe], jobs: Sequence[Job]) -> list[int]:
    """Each job's calls on a Machine of ``exe`` with ``probes``; each job's sum of results."""
    from kuprobe.model import Machine

    machine = Machine.load(str(exe), strict=True)  # a handler that raises is a bug here: fail
    try:
        for p in probes:
            machine.register_uprobe(p)
        return [
            sum(machine.call(j.func, *call_args(j.func, j.arg + i)) for i in range(j.n))
            for j in jobs
        ]
    finally:
        # Model uprobes are global to their file, as in the kernel: leave none behind.
        for p in probes:
            if p.registered:
                machine.unregister_uprobe(p)


def run_live(
    exe: Path, jobs: Sequence[tuple[Job, Sequence[Uprobe]]], backend: Backend | None = None
) -> list[int]:
    """Each job in its own ``target wait`` process, with its probes limited to that pid, on
    ``backend`` (this process's live backend by default).

    Sets each probe's ``pid``. Returns each job's sum of results, once every probe is
    unregistered (so every event is handled and the counters are final).
    """
    if backend is None:
        from kuprobe.live.api import backend as live_backend

        backend = live_backend()
    with ExitStack() as stack:
        targets = [stack.enter_context(WaitingTarget(exe, j.func, j.n, j.arg)) for j, _ in jobs]
        registered: list[Uprobe] = []
        try:
            for target, (_job, probes) in zip(targets, jobs, strict=True):
                for p in probes:
                    p.pid = target.pid
                    backend.register_uprobe(p)
                    registered.append(p)
            return [t.go() for t in targets]
        finally:
            backend.unregister_uprobes(registered)
