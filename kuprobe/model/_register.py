"""Machine.register_* / unregister_*: the top-level API's calls, with the same errors."""

from __future__ import annotations

import errno
from collections.abc import Sequence

from kuprobe.backend import register_all_or_none
from kuprobe.errors import ProbeError
from kuprobe.model.core.kprobes import KprobeTable
from kuprobe.model.core.kretprobes import KretprobeCore
from kuprobe.model.core.uprobes import REGISTRY
from kuprobe.model.semantics import Semantics
from kuprobe.probes import Kprobe, Kretprobe, Uprobe


class ProbeRegistration:
    """Registration for a Machine: kprobes on kernel space, uprobes on user space."""

    space: str
    semantics: Semantics
    kprobes: KprobeTable | None
    kretprobes: KretprobeCore | None

    def _need(self, space: str, what: str) -> None:
        if self.space != space:
            raise ProbeError(
                errno.EINVAL,
                f"{what} need a Machine loaded with space={space!r} (this one is {self.space})",
            )

    def _kprobe_table(self) -> KprobeTable:
        self._need("kernel", "kprobes")
        assert self.kprobes is not None
        return self.kprobes

    def _kretprobe_core(self) -> KretprobeCore:
        self._need("kernel", "kretprobes")
        assert self.kretprobes is not None
        return self.kretprobes

    def register_kprobe(self, p: Kprobe) -> None:
        self._kprobe_table().register(p)

    def unregister_kprobe(self, p: Kprobe) -> None:
        self._kprobe_table().unregister(p)

    def register_kprobes(self, ps: Sequence[Kprobe]) -> None:
        """All or none, as the kernel's register_kprobes()."""
        register_all_or_none(ps, self.register_kprobe, self.unregister_kprobe)

    def unregister_kprobes(self, ps: Sequence[Kprobe]) -> None:
        for p in ps:
            self.unregister_kprobe(p)

    def enable_kprobe(self, p: Kprobe) -> None:
        self._kprobe_table().set_disabled(p, False)

    def disable_kprobe(self, p: Kprobe) -> None:
        self._kprobe_table().set_disabled(p, True)

    def register_kretprobe(self, rp: Kretprobe) -> None:
        self._kretprobe_core().register(rp)

    def unregister_kretprobe(self, rp: Kretprobe) -> None:
        self._kretprobe_core().unregister(rp)

    def register_kretprobes(self, rps: Sequence[Kretprobe]) -> None:
        register_all_or_none(rps, self.register_kretprobe, self.unregister_kretprobe)

    def unregister_kretprobes(self, rps: Sequence[Kretprobe]) -> None:
        for rp in rps:
            self.unregister_kretprobe(rp)

    def register_uprobe(self, up: Uprobe) -> None:
        """Register globally (every Machine mapping the file, now and later)."""
        self._need("user", "uprobes")
        REGISTRY.register(up, self.semantics)

    def unregister_uprobe(self, up: Uprobe) -> None:
        self._need("user", "uprobes")
        REGISTRY.unregister(up)

    def unregister_uprobes(self, ups: Sequence[Uprobe]) -> None:
        for up in ups:
            self.unregister_uprobe(up)
