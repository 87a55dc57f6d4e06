"""The reference model: real machine code in an emulator, with the kernel's probe semantics.

``Machine.load(path, space="user"|"kernel")`` maps an ELF; the same ``Kprobe``,
``Kretprobe`` and ``Uprobe`` objects as the live side register on it, and ``m.call(...)``
runs a function through breakpoints, single-steps out of line, handlers and trampolines,
recording each trap in ``m.trace``. Arches: x86_64, i386 and arm64 (``ARCHES``).

Where the documented designs (the patches the model grew from) and today's kernels differ, a
Machine does either, ``semantics="today"`` (the default, what the cross-check runs against)
or ``"seed"``:

- arm64 kprobes step the slot with the CPU's hardware single-step ("arm64: Kprobes with
  single stepping support", v4.10) under ``"seed"``; today's slot ends on
  ``BRK #KPROBES_BRK_SS_IMM`` with DAIF masked (arm64 moved from the hardware step to a BRK
  after the slot around v5.11; arch/arm64/kernel/probes/kprobes.c).

and ``kretprobe_trampoline="direct"`` (the trampoline saves registers and calls the handler:
"Avoid using kprobe in the arm64 kretprobe trampoline", merged with arm64 kprobes in v4.10)
or ``"kprobe"`` (the earlier design: a kprobe on the trampoline runs the handlers).
"""

from kuprobe.model.arch import ARCHES
from kuprobe.model.core.common import ModelError, ProcessSignalled, TraceEvent
from kuprobe.model.machine import Machine

__all__ = ["ARCHES", "Machine", "ModelError", "ProcessSignalled", "TraceEvent"]
