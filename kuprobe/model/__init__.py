"""The reference model: real machine code in an emulator, with the kernel's probe semantics.

``Machine.load(path, space="user"|"kernel")`` maps an ELF; the same ``Kprobe``,
``Kretprobe`` and ``Uprobe`` objects as the live side register on it, and ``m.call(...)``
runs a function through breakpoints, single-steps out of line, handlers and trampolines,
recording each trap in ``m.trace``.
"""

from kuprobe.model.arch import ARCHES
from kuprobe.model.core.common import ModelError, ProcessSignalled, TraceEvent
from kuprobe.model.machine import Machine

__all__ = ["ARCHES", "Machine", "ModelError", "ProcessSignalled", "TraceEvent"]
