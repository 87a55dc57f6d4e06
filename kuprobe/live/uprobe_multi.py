"""uprobe_multi links (kernel 6.6+): a uprobe attached as a BPF link, and the feature probe.

A uprobe attached as a BPF link of type uprobe_multi is removed on close like a perf event,
but without the perf layer's serialisation: closing many links side by side waits for about
one grace period (kernel/trace/bpf_trace.c: bpf_uprobe_unregister()).
"""

from __future__ import annotations

import ctypes
import errno
import os

from kuprobe.live.bpf import BPF_LINK_CREATE, bpf

BPF_TRACE_UPROBE_MULTI = 48  # include/uapi/linux/bpf.h: enum bpf_attach_type
BPF_F_UPROBE_MULTI_RETURN = 1


class _LinkCreateUprobeMulti(ctypes.Structure):
    """``union bpf_attr``'s link_create, with its uprobe_multi member."""

    _fields_ = (
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("path", ctypes.c_uint64),
        ("offsets", ctypes.c_uint64),
        ("ref_ctr_offsets", ctypes.c_uint64),
        ("cookies", ctypes.c_uint64),
        ("cnt", ctypes.c_uint32),
        ("multi_flags", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
    )


def open_uprobe_multi(
    prog_fd: int,
    path: str,
    offset: int,
    *,
    retprobe: bool,
    pid: int,
    ref_ctr_offset: int,
    cookie: int = 0,
) -> int:
    """One uprobe (or uretprobe) on (path, file offset) as a uprobe_multi link of count 1,
    carrying ``cookie``."""
    c_path = ctypes.create_string_buffer(os.fsencode(path))
    offsets = (ctypes.c_uint64 * 1)(offset)
    ref_ctrs = (ctypes.c_uint64 * 1)(ref_ctr_offset)
    cookies = (ctypes.c_uint64 * 1)(cookie)
    attr = _LinkCreateUprobeMulti(
        prog_fd=prog_fd,
        attach_type=BPF_TRACE_UPROBE_MULTI,
        path=ctypes.addressof(c_path),
        offsets=ctypes.addressof(offsets),
        ref_ctr_offsets=ctypes.addressof(ref_ctrs) if ref_ctr_offset else 0,
        cookies=ctypes.addressof(cookies),
        cnt=1,
        multi_flags=BPF_F_UPROBE_MULTI_RETURN if retprobe else 0,
        pid=max(pid, 0),
    )
    return bpf(BPF_LINK_CREATE, attr)


def uprobe_multi_works(prog_fd: int) -> bool:
    """Feature probe (as libbpf's probe_uprobe_multi_link()): a uprobe_multi link on "/"
    fails with EBADF where the kernel has them, with EINVAL or the like where it has not."""
    try:
        os.close(open_uprobe_multi(prog_fd, "/", 0, retprobe=False, pid=0, ref_ctr_offset=0))
    except OSError as e:
        return e.errno == errno.EBADF
    return True
