"""Signals of a user-space Machine: send_sig(), get_signal() with uprobe_deny_signal()."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kuprobe import context
from kuprobe.model.core.common import Detail, ProcessSignalled
from kuprobe.regs import PtRegs
from kuprobe.task import Task

if TYPE_CHECKING:
    from kuprobe.model.arch.base import Arch
    from kuprobe.model.core.uprobes import UprobeMm
    from kuprobe.model.emu import Emu

# Signals whose default action is to ignore them (signal(7)); every other one terminates.
_IGNORED_BY_DEFAULT = frozenset({signal.SIGCHLD, signal.SIGURG, signal.SIGWINCH, signal.SIGCONT})

SignalHandler = Callable[[Any, int], None]  # (machine, signo)


class SignalDelivery:
    """Pending signals, handlers, and delivery on the way back to user space."""

    uprobes: UprobeMm | None
    task: Task
    hooks: Arch
    emu: Emu
    _pending_signals: list[int]
    _sigactions: dict[int, SignalHandler]
    _signal_why: str

    def record(
        self, kind: str, addr: int, status: str = "", probe: Any = None, detail: Detail = ""
    ) -> None:
        raise NotImplementedError

    def kill(self, signo: int) -> None:
        """send_sig(): make ``signo`` pending for this task (delivered on return to user)."""
        self._send_signal(signo)

    def force_sig(self, signo: int, why: str = "") -> None:
        """force_sig(): the kernel's own signal for this task (``why`` ends up in the
        ProcessSignalled message); a handler, if one is installed, still runs."""
        self._send_signal(signo, why)

    def sigaction(self, signo: int, handler: SignalHandler | None) -> None:
        """Install a (Python) signal handler, or None for the default action."""
        if handler is None:
            self._sigactions.pop(signo, None)
        else:
            self._sigactions[signo] = handler

    def _send_signal(self, signo: int, why: str = "") -> None:
        self._pending_signals.append(signo)
        self._signal_why = why
        self.record("signal", self.emu.pc, detail=f"{signal.Signals(signo).name} pending {why}")

    def _exit_to_user_mode(self, regs: PtRegs) -> None:
        """get_signal() on the way back to user space, with uprobe_deny_signal() first."""
        mm = self.uprobes
        if mm is None:
            return
        while self._pending_signals:
            fatal = signal.SIGKILL in self._pending_signals
            if mm.deny_signal(fatal):
                if mm.utask.state == "SSTEP_TRAPPED":
                    mm.handle_singlestep(regs)  # TIF_UPROBE: abort_xol, then deliver
                    continue
                self.record("signal", 0, mm.utask.state, detail="deferred while single-stepping")
                return
            signo = signal.SIGKILL if fatal else self._pending_signals[0]
            self._pending_signals.remove(signo)
            self._deliver(signo, regs)

    def _deliver(self, signo: int, regs: PtRegs) -> None:
        name = signal.Signals(signo).name
        ip = int(getattr(regs, self.hooks.ip_field()))
        handler = self._sigactions.get(signo)
        if handler is not None and signo != signal.SIGKILL:
            self.record("signal", ip, detail=f"{name} delivered to its handler")
            previous = context.enter_task(self.task)
            try:
                handler(self, signo)
            finally:
                context.leave_task(previous)
            return
        if signo in _IGNORED_BY_DEFAULT:
            self.record("signal", ip, detail=f"{name} ignored")
            return
        self.record("signal", ip, detail=f"{name}: task killed")
        why = getattr(self, "_signal_why", "")
        raise ProcessSignalled(
            signo, f"{self.task.comm}[{self.task.pid}] killed by {name} at {ip:#x} {why}".strip()
        )
