"""The reference model: real machine code in an emulator, with the kernel's probe semantics.

``Machine.load(path, space="user"|"kernel")`` maps an ELF; the same ``Kprobe``,
``Kretprobe`` and ``Uprobe`` objects as the live side register on it, and ``m.call(...)``
runs a function through breakpoints, single-steps out of line, handlers and trampolines,
recording each trap in ``m.trace``. Arches: x86_64, i386 and arm64 (``ARCH_HOOKS``).

Where the documented designs (the patches the model grew from) and today's kernels differ, a
Machine does either: ``semantics="today"`` (the default: the newest kernels, what the
cross-check runs against), ``"seed"`` (the patches' designs), a kernel release
(``semantics=os.uname().release``, ``"6.1"``: the rules of that kernel) or a
``kuprobe.model.semantics.Semantics`` record. ``kuprobe.model.semantics.ROWS`` is the table of
differences (NOP skip-sstep and the emulated branches and pushes, consumer filters and
UPROBE_HANDLER_REMOVE, UTASK_BP_HIT, kprobe fault_handler, the kretprobe handler's ip, the x86
kprobe step by TF or by an int3 after the slot, HIT_SSDONE, the arm64 step), each with the
kernel version that changed it; docs/semantics.md is generated from it.

The kretprobe trampoline is chosen apart: ``kretprobe_trampoline="direct"`` (the trampoline
saves registers and calls the handler: "Avoid using kprobe in the arm64 kretprobe
trampoline", merged with arm64 kprobes in v4.10) or ``"kprobe"`` (the earlier design: a
kprobe on the trampoline runs the handlers).
"""

from typing import TYPE_CHECKING

from kuprobe.model.arch import ARCH_HOOKS
from kuprobe.model.core.common import ModelError, ProcessSignalled, TraceEvent

if TYPE_CHECKING:
    from kuprobe.model.machine import Machine

__all__ = ["ARCH_HOOKS", "Machine", "ModelError", "ProcessSignalled", "TraceEvent"]


def __getattr__(name: str) -> object:
    """``Machine`` on first use: it imports Unicorn (kuprobe/model/emu.py), the rest of the
    package does not, so a Python without a working Unicorn still reads a kernel's rules
    (kuprobe.model.semantics: the cross-check's live side in the arm64 guest does)."""
    if name == "Machine":
        from kuprobe.model.machine import Machine

        return Machine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
