"""The arches the model runs: ``ARCH_HOOKS``, each arch's name -> its hook class.

One explicit registry: adding an arch is a module and a line. kuprobe.arch.ARCHES holds the
arches' records."""

from __future__ import annotations

from kuprobe.errors import KuprobeValueError
from kuprobe.model.arch.arm64 import Arm64Hooks
from kuprobe.model.arch.base import Arch
from kuprobe.model.arch.i386 import I386Hooks
from kuprobe.model.arch.x86_64 import X86_64Hooks

ARCH_HOOKS: dict[str, type[Arch]] = {
    "x86_64": X86_64Hooks,
    "i386": I386Hooks,
    "arm64": Arm64Hooks,
}


def get_arch(name: str) -> Arch:
    """The arch hooks for ``name`` ("x86_64", "i386" …)."""
    try:
        return ARCH_HOOKS[name]()
    except KeyError:
        raise KuprobeValueError(
            f"the model has no {name} arch yet (it has {', '.join(ARCH_HOOKS)})"
        ) from None
