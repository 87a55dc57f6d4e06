"""The bpf(2) system call for the commands kuprobe issues itself (BCC issues the rest).

kernel/bpf/syscall.c; ``union bpf_attr`` and the command numbers are
include/uapi/linux/bpf.h's. Creating (and closing) a map is the cheapest proof that bpf(2)
and a map type work.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

from kuprobe.live.syscall import syscall

# include/uapi/linux/bpf.h: enum bpf_cmd
BPF_MAP_CREATE = 0
BPF_LINK_CREATE = 28

# enum bpf_map_type
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_RINGBUF = 27  # kernel 5.8


def bpf(cmd: int, attr: Any) -> int:
    """bpf(``cmd``, ``attr``): its result (often an fd), or OSError with the errno."""
    return syscall("bpf", cmd, ctypes.byref(attr), ctypes.sizeof(attr))


def bpf_map_works(map_type: int, key_size: int, value_size: int, max_entries: int) -> bool:
    """Create (and close) a BPF map: the cheapest proof that bpf(2) and that map type work."""
    attr = (ctypes.c_uint32 * 16)()
    attr[0], attr[1], attr[2], attr[3] = map_type, key_size, value_size, max_entries
    try:
        os.close(bpf(BPF_MAP_CREATE, attr))
    except OSError:
        return False
    return True
