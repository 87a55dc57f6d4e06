"""A uretprobe's ``func`` on kernels whose BPF programs cannot read it (before 6.6): the
probed function's address in the process, from its mappings."""

from __future__ import annotations

import ctypes
import os

from kuprobe.live.uprobe import func_vaddr
from kuprobe.resolve import resolve_uprobe


def test_the_address_this_process_calls_the_function_at() -> None:
    target = resolve_uprobe("c", symbol_name="getpid", offset=0)
    libc_getpid = ctypes.cast(ctypes.CDLL(None).getpid, ctypes.c_void_p).value
    assert func_vaddr(os.getpid(), target.inode, target.offset) == libc_getpid


def test_unmapped_or_gone_is_zero() -> None:
    target = resolve_uprobe("c", symbol_name="getpid", offset=0)
    assert func_vaddr(os.getpid(), (target.inode[0], 1), target.offset) == 0
    assert func_vaddr(2**22 + 1, target.inode, target.offset) == 0  # no such process
    assert func_vaddr(os.getpid(), None, None) == 0
