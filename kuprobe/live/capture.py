"""Memory at the hit, live: what a probe's ``Capture``s read, configured and handed over.

A probe's ``Capture`` declarations become the integers of its slot's ``kuprobe_capcfg`` entry
(kuprobe/bpf_programs/probe_pool.bpf.c: kuprobe_capture()); a handler wrapper hands the
captured bytes of each event to kuprobe/uaccess.py."""

from __future__ import annotations

import errno
import re
import struct
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from kuprobe import context
from kuprobe.arch import ARCHES
from kuprobe.context import StacksAtHit
from kuprobe.errors import ProbeError
from kuprobe.live.events import (
    CAPTURED,
    EVENT_SIZE,
    KUPROBE_CAP_AUTO,
    KUPROBE_CAP_BUF,
    KUPROBE_CAP_KERNEL,
    KUPROBE_CAP_STR,
    KUPROBE_CAP_USER,
    KUPROBE_CAPTURE_BYTES,
    KUPROBE_CAPTURES,
    KUPROBE_EV_CAPTURED,
    KUPROBE_SRC_REG,
    KUPROBE_SRC_STACK32,
    KUPROBE_SRC_STACK64,
    KUPROBE_STACK_BYTES,
    live_host,
)
from kuprobe.probes import Capture, Kprobe, Kretprobe, Uprobe
from kuprobe.regs import raw_record
from kuprobe.uaccess import CapturedMemory

# kind, space, src, mask32, index, offset, size
CaptureCfg = tuple[int, int, int, int, int, int, int]
_ARGN = re.compile(r"arg(\d+)")
_STACKN = re.compile(r"stack(\d+)")
_FLAGS = struct.Struct("<4xI")
_SPACES = {"user": KUPROBE_CAP_USER, "kernel": KUPROBE_CAP_KERNEL, "auto": KUPROBE_CAP_AUTO}


def capture_cfg(c: Capture, arch: str, *, kernel: bool) -> CaptureCfg:
    """Where ``c``'s address comes from in the event of an ``arch`` task: a word of the
    host's pt_regs, or a stack word (argN as regs.py's accessors read it)."""
    info = ARCHES[arch]
    host = live_host().regs.fields
    word = info.word_bytes
    src, index = KUPROBE_SRC_REG, -1
    name = c.at
    if name == "retval":
        name = info.regs.retval
    if m := _ARGN.fullmatch(name):
        n = int(m.group(1))
        args = info.regs.kernel_args if kernel else info.regs.user_args
        # beyond the registers: on the stack, above the return address (regs.py)
        name = args[n] if n < len(args) else f"stack{n - len(args) + 1}"
    if m := _STACKN.fullmatch(name):
        src = KUPROBE_SRC_STACK64 if word == 8 else KUPROBE_SRC_STACK32
        index = int(m.group(1))
        if index >= KUPROBE_STACK_BYTES // word:
            raise ProbeError(
                errno.EINVAL,
                f"Capture at {c.at!r}: only {KUPROBE_STACK_BYTES // word} stack words are captured",
            )
    elif name in info.regs.fields and name in host:
        index = host.index(name)
    else:
        raise ProbeError(
            errno.EINVAL,
            f"Capture at {c.at!r}: not argN, retval, stackN or a register of {arch}",
        )
    kind = KUPROBE_CAP_STR if c.kind == "str" else KUPROBE_CAP_BUF
    return (kind, _SPACES[c.space], src, int(word == 4), index, c.offset, c.size)


def with_captured(
    fn: Callable[..., Any],
    captures: Sequence[Capture],
    stack_of: Callable[[int], list[int]] | None = None,
) -> Callable[..., Any]:
    """``fn`` (a handler whose last argument is the event's regs) with the event's captured
    memory current for kuprobe/uaccess.py while it runs, and with ``stack_of`` (the pool's
    stack map reader) its recorded stacks for kuprobe/stacks.py."""
    assert KUPROBE_CAPTURE_BYTES * len(captures) <= CAPTURED.size
    spaces = tuple(c.space for c in captures)
    size = KUPROBE_CAPTURE_BYTES
    n = KUPROBE_CAPTURES

    def handler(*args: Any) -> Any:
        chunk, off = raw_record(args[-1])
        memory = None
        stacks = None
        if _FLAGS.unpack_from(chunk, off)[0] & KUPROBE_EV_CAPTURED:
            vals = CAPTURED.unpack_from(chunk, off + EVENT_SIZE)
            addrs, lens, data = vals[:n], vals[n : 2 * n], vals[2 * n]
            if stack_of is not None:
                stacks = StacksAtHit(
                    _stack_reader(stack_of, vals[2 * n + 1], "user"),
                    _stack_reader(stack_of, vals[2 * n + 2], "kernel"),
                )
            spans = []
            for i, space in enumerate(spaces):
                addr = addrs[i]
                user = space == "user" or (space == "auto" and not addr >> 63)
                spans.append((addr, lens[i], data[i * size : (i + 1) * size], user))
            memory = CapturedMemory(spans)
        previous = context.enter_hit(memory, stacks)
        try:
            return fn(*args)
        finally:
            context.leave_hit(previous)

    return handler


def _stack_reader(
    stack_of: Callable[[int], list[int]], stack_id: int, which: str
) -> Callable[[], list[int]] | None:
    if stack_id == -1:
        return None  # not asked for

    def read() -> list[int]:
        if stack_id < 0:
            code = errno.errorcode.get(-stack_id, str(-stack_id))
            raise ProbeError(
                errno.EFAULT, f"the {which} stack could not be recorded at the hit ({code})"
            )
        return stack_of(stack_id)

    return read


_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def captured_for(
    probe: Uprobe | Kprobe | Kretprobe, fn: _Handler, stack_of: Callable[[int], list[int]]
) -> _Handler:
    """``fn``, with the memory and stacks ``probe`` recorded at the hit current while it runs
    (with_captured(), which keeps the arguments); ``fn`` itself if the probe asks for none.
    ``stack_of``: the pool's stack map reader."""
    if probe.capture or probe.stack:
        return cast(_Handler, with_captured(fn, probe.capture, stack_of if probe.stack else None))
    return fn
