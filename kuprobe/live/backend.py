"""The live backend: the kernel's verbs of the ``kuprobe.backend.Backend`` contract.

Every kind of probe goes over the registration steps they share (kuprobe/live/register.py)."""

from __future__ import annotations

from collections.abc import Sequence

from kuprobe.live.kprobe import KprobeOps
from kuprobe.live.uprobe import UprobeOps
from kuprobe.probes import Kprobe, Kretprobe, Uprobe

__all__ = ["LiveBackend"]


class LiveBackend(UprobeOps, KprobeOps):
    """All live probes of this process. ``kuprobe``'s module-level functions use one.

    Each ``unregister_*`` takes ``timeout``: without one it returns when every event recorded
    before the call was handled; with one, the events still queued then are counted in the
    probe's ``dropped``."""

    def register_kprobe(self, p: Kprobe) -> None:
        self.register_kprobes([p])

    def unregister_kprobe(self, p: Kprobe, *, timeout: float | None = None) -> None:
        self.unregister(p, timeout=timeout)

    def unregister_kprobes(self, kps: Sequence[Kprobe], *, timeout: float | None = None) -> None:
        self.unregister_many(list(kps), timeout=timeout)

    def enable_kprobe(self, p: Kprobe) -> None:
        self.set_enabled(p, True)

    def disable_kprobe(self, p: Kprobe) -> None:
        self.set_enabled(p, False)

    def register_kretprobe(self, rp: Kretprobe) -> None:
        self.register_kretprobes([rp])

    def unregister_kretprobe(self, rp: Kretprobe, *, timeout: float | None = None) -> None:
        self.unregister(rp, timeout=timeout)

    def unregister_kretprobes(
        self, rps: Sequence[Kretprobe], *, timeout: float | None = None
    ) -> None:
        self.unregister_many(list(rps), timeout=timeout)

    def unregister_uprobe(self, up: Uprobe, *, timeout: float | None = None) -> None:
        self.unregister(up, timeout=timeout)

    def unregister_uprobes(self, ups: Sequence[Uprobe], *, timeout: float | None = None) -> None:
        """Several at once: the kernel's grace periods run side by side."""
        self.unregister_many(list(ups), timeout=timeout)
