"""The event layout of kuprobe/bpf_programs/kuprobe_event.h, mirrored field by field.

``EVENT_FIELDS`` is what tests/unit/test_event_layout.py compares with the C header;
``decoder_for(arch)`` turns an event's bytes into (pt_regs values, stack words) lazily.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from typing import Any

from kuprobe.arch import ARM64, I386, X86_64, ArchInfo, host_arch, host_machine
from kuprobe.errors import ProbeError
from kuprobe.regs import STACK_WORDS, Decoder, PtRegs, lazy_regs, regs_class

# kuprobe/bpf_programs/kuprobe_event.h
KUPROBE_STACK_BYTES = 128
KUPROBE_CFG_STREAM = 0x1
KUPROBE_CFG_RET = 0x2
KUPROBE_CFG_KERNEL = 0x4
KUPROBE_CFG_REMOVABLE = 0x8
KUPROBE_CFG_OFF = 0x10
KUPROBE_EV_RET = 0x1
KUPROBE_EV_NOSTACK = 0x2
KUPROBE_CFG_CAPTURE = 0x20
KUPROBE_CFG_STACK = 0x40
KUPROBE_CFG_FUNC = 0x80
KUPROBE_CFG_NO_FUNC_IP = 0x100
KUPROBE_EV_CAPTURED = 0x4
KUPROBE_CAPTURES = 4
KUPROBE_CAPTURE_BYTES = 256
KUPROBE_CAP_NONE, KUPROBE_CAP_STR, KUPROBE_CAP_BUF = 0, 1, 2
KUPROBE_CAP_USER, KUPROBE_CAP_KERNEL, KUPROBE_CAP_AUTO = 0, 1, 2
KUPROBE_SRC_REG, KUPROBE_SRC_STACK64, KUPROBE_SRC_STACK32 = 0, 1, 2

# The host kernels whose struct pt_regs the event carries (kuprobe_event.h: KUPROBE_NREGS):
# x86_64's whole frame (arch/x86/include/asm/ptrace.h); on arm64 its head, struct
# user_pt_regs { regs[31], sp, pc, pstate } (arch/arm64/include/asm/ptrace.h: struct pt_regs
# begins with it, and a BPF kprobe program's ctx is bpf_user_pt_regs_t = struct user_pt_regs).
LIVE_HOSTS: tuple[ArchInfo, ...] = (X86_64, ARM64)


def live_host() -> ArchInfo:
    """This machine's arch, if the live backend runs on it; ProbeError(EOPNOTSUPP) if not."""
    host = host_arch()
    if host not in LIVE_HOSTS:
        raise ProbeError(
            errno.EOPNOTSUPP,
            f"kuprobe's live backend runs on {', '.join(a.name for a in LIVE_HOSTS)} hosts; "
            f"this is {host_machine()}",
            hint="the model (kuprobe.model.Machine) runs anywhere",
        )
    assert host is not None
    return host


def host_nregs() -> int:
    """struct pt_regs of the host kernel, in 64-bit words."""
    return len(live_host().regs.fields)


def host_sp_index() -> int:
    """The stack pointer's word number in the host kernel's struct pt_regs."""
    regs = live_host().regs
    return regs.fields.index(regs.sp)


def host_ip_index() -> int:
    """The instruction pointer's word number in the host kernel's struct pt_regs."""
    regs = live_host().regs
    return regs.fields.index(regs.ip)


# The layout the event has on this host; elsewhere x86_64's (live_host() refuses such a host
# before a pool is made).
_HOST = host_arch()
NREGS = len((_HOST if _HOST in LIVE_HOSTS else X86_64).regs.fields)


# (name, struct format) in the header's order; offsets follow from natural alignment.
EVENT_FIELDS: tuple[tuple[str, str], ...] = (
    ("slot", "I"),
    ("flags", "I"),
    ("ts", "Q"),
    ("func_ip", "Q"),
    ("pid_tgid", "Q"),
    ("comm", "16s"),
    ("regs", f"{NREGS}Q"),
    ("stack", f"{KUPROBE_STACK_BYTES}s"),
)
EVENT_FORMAT = "<" + "".join(fmt for _n, fmt in EVENT_FIELDS)
EVENT_SIZE = struct.calcsize(EVENT_FORMAT)
HEAD = struct.Struct("<IIQQ")  # slot, flags, ts, func_ip
TASK = struct.Struct("<Q16s")  # pid_tgid, comm
TASK_OFFSET = HEAD.size
# One ring buffer record: the 8-byte ring header (len, pg_off), then the event's head fields;
# the rest (regs, stack) is decoded only if a handler reads it.
RINGBUF_HDR = 8
RECORD_STRIDE = (EVENT_SIZE + RINGBUF_HDR + 7) & ~7
RECORD = struct.Struct(
    f"<II{HEAD.format[1:]}{TASK.format[1:]}{RECORD_STRIDE - RINGBUF_HDR - HEAD.size - TASK.size}x"
)
REGS_OFFSET = TASK_OFFSET + TASK.size
STACK_OFFSET = REGS_OFFSET + 8 * NREGS
assert STACK_OFFSET + KUPROBE_STACK_BYTES == EVENT_SIZE

# A captured event (KUPROBE_EV_CAPTURED): the event, then struct kuprobe_captured.
CAPTURED_FIELDS: tuple[tuple[str, str], ...] = (
    ("addr", f"{KUPROBE_CAPTURES}Q"),
    ("len", f"{KUPROBE_CAPTURES}i"),
    ("data", f"{KUPROBE_CAPTURES * KUPROBE_CAPTURE_BYTES}s"),
    ("user_stack", "i"),
    ("kernel_stack", "i"),
)
CAPTURED = struct.Struct("<" + "".join(fmt for _n, fmt in CAPTURED_FIELDS))
CAPTURED_EVENT_SIZE = EVENT_SIZE + CAPTURED.size
CAPTURED_STRIDE = (CAPTURED_EVENT_SIZE + RINGBUF_HDR + 7) & ~7
RECORD_CAPTURED = struct.Struct(
    f"<II{HEAD.format[1:]}{TASK.format[1:]}{CAPTURED_STRIDE - RINGBUF_HDR - HEAD.size - TASK.size}x"
)
# The record sizes the ring carries, and each one's (record struct, stride).
RECORDS: dict[int, tuple[struct.Struct, int]] = {
    EVENT_SIZE: (RECORD, RECORD_STRIDE),
    CAPTURED_EVENT_SIZE: (RECORD_CAPTURED, CAPTURED_STRIDE),
}

_X86_64_REGS = struct.Struct(f"<{len(X86_64.regs.fields)}Q")
_ARM64_REGS = struct.Struct(f"<{len(ARM64.regs.fields)}Q")
_STACK64 = struct.Struct(f"<{STACK_WORDS}Q")
_STACK32 = struct.Struct(f"<{STACK_WORDS}I")
_M32 = 0xFFFFFFFF


def _decode_x86_64(buf: Any, off: int) -> tuple[list[int], tuple[int, ...]]:
    vals = list(_X86_64_REGS.unpack_from(buf, off + REGS_OFFSET))
    return vals, _STACK64.unpack_from(buf, off + STACK_OFFSET)


_I386_FROM_64 = tuple(
    X86_64.regs.fields.index(name) if name in X86_64.regs.fields else -1
    for name in I386.regs.fields
)


def _decode_i386(buf: Any, off: int) -> tuple[list[int], tuple[int, ...]]:
    """A 32-bit task on x86_64: the 64-bit pt_regs, renamed and truncated to i386's.

    ds/es/fs/gs are not in the 64-bit frame and read 0.
    """
    r = _X86_64_REGS.unpack_from(buf, off + REGS_OFFSET)
    vals = [r[i] & _M32 if i >= 0 else 0 for i in _I386_FROM_64]
    return vals, _STACK32.unpack_from(buf, off + STACK_OFFSET)


def _decode_arm64(buf: Any, off: int) -> tuple[list[int], tuple[int, ...]]:
    """An arm64 task on an arm64 kernel: struct user_pt_regs as it is."""
    vals = list(_ARM64_REGS.unpack_from(buf, off + REGS_OFFSET))
    return vals, _STACK64.unpack_from(buf, off + STACK_OFFSET)


DECODERS: dict[str, Decoder] = {
    X86_64.name: _decode_x86_64,
    I386.name: _decode_i386,
    ARM64.name: _decode_arm64,
}


def live_regs_parts(arch: str) -> tuple[type[PtRegs], Decoder]:
    """The PtRegs class of ``arch`` and the decoder its lazy live snapshots use."""
    return regs_class(arch), DECODERS[arch]


def regs_factory(arch: str) -> Callable[[Any, int, int], PtRegs]:
    """A fast constructor of lazy PtRegs snapshots for events of ``arch`` tasks."""
    return lazy_regs(*live_regs_parts(arch))
