"""kuprobe: write Linux kprobes and uprobes from Python, the way a kernel module does.

Registered probes run live (a BCC-compiled eBPF program on a real kernel probe, events
delivered to the Python handlers) — see ``kuprobe.live`` — and the same objects run on the
reference model of the kernel's trap semantics, ``kuprobe.model.Machine``.
"""

from kuprobe.errors import KuprobeError, ProbeError
from kuprobe.live.api import (
    disable_kprobe,
    enable_kprobe,
    register_kprobe,
    register_kprobes,
    register_kretprobe,
    register_kretprobes,
    register_uprobe,
    register_usdt,
    unregister_kprobe,
    unregister_kprobes,
    unregister_kretprobe,
    unregister_kretprobes,
    unregister_uprobe,
    unregister_usdt,
)
from kuprobe.probes import Capture, Kprobe, Kretprobe, KretprobeInstance, Uprobe, UprobeConsumer
from kuprobe.regs import (
    PtRegs,
    instruction_pointer,
    regs_get_kernel_argument,
    regs_get_kernel_stack_nth,
    regs_return_value,
    user_argument,
    user_stack_pointer,
)
from kuprobe.task import current
from kuprobe.uaccess import (
    copy_from_kernel_nofault,
    copy_from_user,
    strncpy_from_kernel_nofault,
    strncpy_from_user,
)
from kuprobe.usdt import Usdt, UsdtSite

__all__ = [
    "Capture",
    "Kprobe",
    "Kretprobe",
    "KretprobeInstance",
    "KuprobeError",
    "ProbeError",
    "PtRegs",
    "Uprobe",
    "UprobeConsumer",
    "Usdt",
    "UsdtSite",
    "copy_from_kernel_nofault",
    "copy_from_user",
    "current",
    "disable_kprobe",
    "enable_kprobe",
    "instruction_pointer",
    "register_kprobe",
    "register_kprobes",
    "register_kretprobe",
    "register_kretprobes",
    "register_uprobe",
    "register_usdt",
    "regs_get_kernel_argument",
    "regs_get_kernel_stack_nth",
    "regs_return_value",
    "strncpy_from_kernel_nofault",
    "strncpy_from_user",
    "unregister_kprobe",
    "unregister_kprobes",
    "unregister_kretprobe",
    "unregister_kretprobes",
    "unregister_uprobe",
    "unregister_usdt",
    "user_argument",
    "user_stack_pointer",
]
