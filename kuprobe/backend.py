"""The contract the live backend and the model share: the kernel's registration verbs.

``kuprobe.live.LiveBackend`` (a real kernel through BPF) and ``kuprobe.model.Machine`` (the
reference model) both implement ``Backend``; mypy checks each against it. The module-level
functions of ``kuprobe`` bind to the default live backend; ``kuprobe.cli``'s sessions and the
cross-check take any backend. ``register_probe`` / ``unregister_probe`` pick the verb for a
probe object's kind, and ``register_all_or_none`` is the one all-or-none batch rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

from kuprobe.errors import KuprobeTypeError
from kuprobe.probes import AnyProbe, Kprobe, Kretprobe, Uprobe


@runtime_checkable
class Backend(Protocol):
    """include/linux/kprobes.h and include/linux/uprobes.h, as methods."""

    def register_kprobe(self, p: Kprobe) -> None: ...
    def unregister_kprobe(self, p: Kprobe) -> None: ...
    def register_kprobes(self, kps: Sequence[Kprobe]) -> None: ...
    def unregister_kprobes(self, kps: Sequence[Kprobe]) -> None: ...
    def enable_kprobe(self, p: Kprobe) -> None: ...
    def disable_kprobe(self, p: Kprobe) -> None: ...
    def register_kretprobe(self, rp: Kretprobe) -> None: ...
    def unregister_kretprobe(self, rp: Kretprobe) -> None: ...
    def register_kretprobes(self, rps: Sequence[Kretprobe]) -> None: ...
    def unregister_kretprobes(self, rps: Sequence[Kretprobe]) -> None: ...
    def register_uprobe(self, up: Uprobe) -> None: ...
    def unregister_uprobe(self, up: Uprobe) -> None: ...
    def unregister_uprobes(self, ups: Sequence[Uprobe]) -> None: ...


def _verbs(backend: Backend, probe: AnyProbe) -> tuple[Callable[..., None], Callable[..., None]]:
    """The backend's register and unregister verbs for ``probe``'s kind."""
    if isinstance(probe, Kprobe):
        return backend.register_kprobe, backend.unregister_kprobe
    if isinstance(probe, Kretprobe):
        return backend.register_kretprobe, backend.unregister_kretprobe
    if isinstance(probe, Uprobe):
        return backend.register_uprobe, backend.unregister_uprobe
    raise KuprobeTypeError(f"not a probe: {type(probe).__name__}")


def register_probe(backend: Backend, probe: AnyProbe) -> None:
    """The backend's register verb for ``probe``'s kind."""
    _verbs(backend, probe)[0](probe)


def unregister_probe(backend: Backend, probe: AnyProbe) -> None:
    """The backend's unregister verb for ``probe``'s kind."""
    _verbs(backend, probe)[1](probe)


P = TypeVar("P")


def register_all_or_none(
    probes: Sequence[P], register: Callable[[P], None], unregister: Callable[[P], None]
) -> None:
    """kernel/kprobes.c: register_kprobes(): register each in turn; on a failure, unregister
    those already registered and re-raise, so the batch is all or none."""
    done: list[P] = []
    try:
        for p in probes:
            register(p)
            done.append(p)
    except BaseException:
        for p in reversed(done):
            unregister(p)
        raise
