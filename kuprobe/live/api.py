"""The kernel's registration functions, on the live kernel.

They are include/linux/kprobes.h's and include/linux/uprobes.h's. One backend per process, made
on first use; every probe is unregistered on interpreter exit and on SIGINT/SIGTERM, within 2 s:
events still queued then are counted in each probe's ``dropped`` (and logged), not handled.

``unregister_*(…)`` returns once every event recorded for the probe has been handled, and no
handler of it runs afterwards; ``timeout=`` bounds that wait, counting the rest in
``dropped``. Called from a handler (the dispatcher thread cannot wait for the events queued
behind it), it detaches at once, counts the probe's queued events in ``dropped``, and the
probe reads ``registered`` until the dispatcher has passed them; then its counters are final.
Always ``hits == handled + handler_errors + lost + dropped``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from kuprobe.live.backend import LiveBackend
from kuprobe.probes import Kprobe, Kretprobe, Uprobe
from kuprobe.usdt import Usdt

_backend: LiveBackend | None = None
_backend_lock = threading.Lock()
_signals_installed = False


def backend() -> LiveBackend:
    """The process's live backend (made on first use, with its exit hooks)."""
    global _backend, _signals_installed
    with _backend_lock:
        if _backend is None:
            _backend = LiveBackend()  # registers its own atexit hook
        if not _signals_installed and threading.current_thread() is threading.main_thread():
            # made first on another thread: the main thread installs them on its first call
            _install_signal_handlers()
            _signals_installed = True
        return _backend


def _install_signal_handlers() -> None:
    """SIGINT/SIGTERM unregister everything first (within 2 s: events still queued then are
    counted in ``dropped``), then do what they did before. A signal that arrives while
    kuprobe creates or closes a BPF link, or while it is already shutting down, waits for
    that to end (kuprobe/live/signals.py: SignalsDeferred)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signals can only be handled on the main thread; atexit still cleans up
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def handler(sig: int, frame: FrameType | None, previous: Any = previous) -> None:
            b = _backend
            if b is not None:
                if b.signals.defer(lambda: handler(sig, frame, previous)):
                    return
                b.shutdown(close=False)
            if callable(previous):
                previous(sig, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(sig, signal.SIG_DFL)
                signal.raise_signal(sig)

        signal.signal(signum, handler)


def register_kprobe(p: Kprobe) -> None:
    """Arm ``p`` on the live kernel; raises ProbeError with the kernel's errno."""
    backend().register_kprobe(p)


def register_kprobes(kps: Sequence[Kprobe]) -> None:
    """All or none, as the kernel's register_kprobes()."""
    backend().register_kprobes(kps)


def unregister_kprobe(p: Kprobe, timeout: float | None = None) -> None:
    """Disarm ``p``; returns once every event recorded for it has been handled (with
    ``timeout`` s: the events still queued then are counted in ``p.dropped``)."""
    backend().unregister_kprobe(p, timeout=timeout)


def unregister_kprobes(kps: Sequence[Kprobe], timeout: float | None = None) -> None:
    backend().unregister_kprobes(kps, timeout=timeout)


def enable_kprobe(p: Kprobe) -> None:
    backend().enable_kprobe(p)


def disable_kprobe(p: Kprobe) -> None:
    backend().disable_kprobe(p)


def register_kretprobe(rp: Kretprobe) -> None:
    backend().register_kretprobe(rp)


def register_kretprobes(rps: Sequence[Kretprobe]) -> None:
    """All or none, as the kernel's register_kretprobes()."""
    backend().register_kretprobes(rps)


def unregister_kretprobe(rp: Kretprobe, timeout: float | None = None) -> None:
    backend().unregister_kretprobe(rp, timeout=timeout)


def unregister_kretprobes(rps: Sequence[Kretprobe], timeout: float | None = None) -> None:
    backend().unregister_kretprobes(rps, timeout=timeout)


def register_uprobe(up: Uprobe) -> None:
    """Arm ``up`` on (inode, offset) of its file; its consumer's handlers get the events."""
    backend().register_uprobe(up)


def unregister_uprobe(up: Uprobe, timeout: float | None = None) -> None:
    """Disarm ``up``; returns with every recorded event handled and final counters (with
    ``timeout`` s: the events still queued then are counted in ``up.dropped``)."""
    backend().unregister_uprobe(up, timeout=timeout)


def unregister_uprobes(ups: Sequence[Uprobe], timeout: float | None = None) -> None:
    """Disarm several at once: the kernel's grace periods run in parallel."""
    backend().unregister_uprobes(ups, timeout=timeout)


def register_usdt(u: Usdt) -> None:
    """Arm every site of a USDT probe (all or none); its semaphore is raised meanwhile."""
    u.register(backend())


def unregister_usdt(u: Usdt, timeout: float | None = None) -> None:
    """Disarm every site of ``u`` in one batch; counters are final afterwards."""
    backend().unregister_uprobes([p for p in u.uprobes if p.registered], timeout=timeout)
