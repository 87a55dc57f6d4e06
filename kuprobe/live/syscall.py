"""System calls by name: libc's syscall(2) with this host's numbers (kuprobe.arch).

The C library wraps none of the calls the live backend makes itself (perf_event_open, bpf,
membarrier), so they go through syscall(2) with the number from the host's ArchInfo record.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


@functools.cache
def nr(name: str) -> int:
    """The host's number for syscall ``name`` (kuprobe.arch), or ProbeError(EOPNOTSUPP)."""
    from kuprobe.live.events import live_host

    return live_host().syscalls[name]


def syscall(name: str, *args: Any) -> int:
    """syscall(2) ``name`` with ``args``: its result (often an fd), or OSError with the
    errno, as os.* raise it."""
    ret = libc.syscall(nr(name), *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)
