"""The live backend: every kind of probe over one core (see kuprobe/live/core.py), with the
kernel's verbs of the ``kuprobe.backend.Backend`` contract."""

from __future__ import annotations

from collections.abc import Sequence

from kuprobe.live.core import describe
from kuprobe.live.kprobe import KprobeOps
from kuprobe.live.uprobe import UprobeOps
from kuprobe.probes import Kprobe, Kretprobe, Uprobe

__all__ = ["LiveBackend", "describe"]


class LiveBackend(UprobeOps, KprobeOps):
    """All live probes of this process. ``kuprobe``'s module-level functions use one."""

    def register_kprobe(self, p: Kprobe) -> None:
        self.register_kprobes([p])

    def unregister_kprobe(self, p: Kprobe) -> None:
        self.unregister(p)

    def unregister_kprobes(self, kps: Sequence[Kprobe]) -> None:
        self.unregister_many(list(kps))

    def enable_kprobe(self, p: Kprobe) -> None:
        self.set_enabled(p, True)

    def disable_kprobe(self, p: Kprobe) -> None:
        self.set_enabled(p, False)

    def register_kretprobe(self, rp: Kretprobe) -> None:
        self.register_kretprobes([rp])

    def unregister_kretprobe(self, rp: Kretprobe) -> None:
        self.unregister(rp)

    def unregister_kretprobes(self, rps: Sequence[Kretprobe]) -> None:
        self.unregister_many(list(rps))

    def unregister_uprobe(self, up: Uprobe) -> None:
        self.unregister(up)

    def unregister_uprobes(self, ups: Sequence[Uprobe]) -> None:
        """Several at once: the kernel's grace periods run side by side."""
        self.unregister_many(list(ups))
