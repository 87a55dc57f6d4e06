"""A BPF program on a perf event through a BPF link (kernel/bpf/syscall.c: bpf_perf_link).

The link (BPF_LINK_CREATE, attach type BPF_PERF_EVENT, Linux 5.15) carries a cookie, which
the program reads with bpf_get_attach_cookie(); the perf event is a kprobe, uprobe or
tracepoint one (kuprobe/live/perf_event.py).
"""

from __future__ import annotations

import ctypes
import os

from kuprobe.live.bpf import BPF_LINK_CREATE, bpf
from kuprobe.live.perf_event import PERF_EVENT_IOC_ENABLE, ioctl

BPF_PERF_EVENT = 41  # include/uapi/linux/bpf.h: enum bpf_attach_type


class _LinkCreatePerfEvent(ctypes.Structure):
    """``union bpf_attr``'s link_create, with its perf_event member (Linux 5.15)."""

    _fields_ = (
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("bpf_cookie", ctypes.c_uint64),
    )


def link_perf_event(perf_fd: int, prog_fd: int, cookie: int) -> int:
    """Attach the program to the perf event through a BPF link carrying ``cookie`` (what
    bpf_get_attach_cookie() returns in the program), and enable the event; returns the link.
    Closes ``perf_fd`` on failure."""
    try:
        link = bpf(
            BPF_LINK_CREATE,
            _LinkCreatePerfEvent(
                prog_fd=prog_fd, target_fd=perf_fd, attach_type=BPF_PERF_EVENT, bpf_cookie=cookie
            ),
        )
    except OSError:
        os.close(perf_fd)
        raise
    try:
        ioctl(perf_fd, PERF_EVENT_IOC_ENABLE)
    except OSError:
        os.close(link)
        os.close(perf_fd)
        raise
    return link
