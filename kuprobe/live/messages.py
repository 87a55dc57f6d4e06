"""How the live backend names a probe and a refused attach, in its errors and its log."""

from __future__ import annotations

import errno
import os

from kuprobe.errors import ProbeError
from kuprobe.probes import Kprobe, Kretprobe, Uprobe


def describe(p: object) -> str:
    """A probe in a few words: ``uprobe /bin/bash:readline+0x4``, ``kretprobe do_sys_open``."""
    if isinstance(p, Uprobe):
        where = p.symbol_name or ""
        if p.offset:
            where = f"{where}+{p.offset:#x}" if where else f"{p.offset:#x}"
        return f"uprobe {p.path}:{where}"
    if isinstance(p, Kprobe | Kretprobe):
        kind = "kprobe" if isinstance(p, Kprobe) else "kretprobe"
        where = kname(p.symbol_name, p.offset) if p.symbol_name else f"{p.addr or 0:#x}"
        return f"{kind} {where}"
    return type(p).__name__


def kname(sym: str | None, off: int) -> str:
    if sym is None:
        return f"{off:#x}"
    return f"{sym}+{off}" if off else sym


ENOTSUPP = 524  # include/linux/errno.h: kernel-internal, e.g. uprobes on an int3
_ERRNO_TEXT = {
    errno.ENOENT: "no such symbol in the kernel (see /proc/kallsyms)",
    errno.EILSEQ: "the address is inside an instruction",
    errno.EINVAL: "the kernel refused this address (not text, or blacklisted for kprobes)",
    errno.EBUSY: "the address is busy (another kind of probe owns it)",
    errno.EPERM: "not permitted (root with CAP_BPF/CAP_PERFMON needed; lockdown?)",
    errno.EACCES: "permission denied",
    errno.ESRCH: "no such process",
    errno.EOPNOTSUPP: "not supported by this kernel",
    errno.ENOSPC: "the kernel has no room for more probes",
    ENOTSUPP: "the kernel cannot probe this instruction",
}


# A uprobe at a checked instruction boundary: kernel/events/uprobes.c: alloc_uprobe() keeps one
# struct uprobe per (inode, offset), and a second ref_ctr_offset for it is refused
# (ref_ctr_mismatch_warn(): "ref_ctr_offset mismatch" in dmesg). Since Linux 4.20, "Uprobes/sdt:
# Prevent multiple reference counter for same uprobe".
_UPROBE_EINVAL = (
    "the kernel refused this place: most likely a uprobe already there (this process's or "
    "another tool's, perhaps still being removed) has another ref_ctr_offset (a USDT "
    "semaphore, or none); dmesg says 'ref_ctr_offset mismatch'"
)
_UPROBE_EINVAL_HINT = (
    "remove the other probe at this place first, or give both the same ref_ctr_offset "
    "(BCC 0.26's attach_uprobe() passes a stray one: iovisor/bcc issue 5236)"
)


def attach_error(e: OSError, probe: object, where: str) -> ProbeError:
    if isinstance(e, ProbeError):
        return e
    code = e.errno or errno.EIO
    if code == errno.EINVAL and isinstance(probe, Uprobe):
        return ProbeError(code, f"{where}: {_UPROBE_EINVAL}", probe=probe, hint=_UPROBE_EINVAL_HINT)
    text = _ERRNO_TEXT.get(code, os.strerror(code))
    if code == ENOTSUPP:
        code = errno.EOPNOTSUPP
    return ProbeError(code, f"{where}: {text}", probe=probe)
