"""membarrier(2): a full memory barrier on this CPU, between a map update and a map lookup.

kernel/sched/membarrier.c: membarrier_private_expedited() runs smp_mb() on entry and on
exit ("system call entry is not a mb", "exit from system call is not a mb"). Unregistering
needs exactly that between storing KUPROBE_CFG_OFF and reading the in-flight counts.
"""

from __future__ import annotations

import functools

from kuprobe.live.syscall import libc, nr

MEMBARRIER_CMD_PRIVATE_EXPEDITED = 1 << 3
MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED = 1 << 4


@functools.cache
def _membarrier_registered() -> bool:
    return _membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)


def _membarrier(cmd: int) -> bool:
    return int(libc.syscall(nr("membarrier"), cmd, 0, 0)) == 0


def full_barrier() -> bool:
    """A full memory barrier between the caller's earlier stores (a map update) and its later
    loads (a map lookup); False where the kernel has no membarrier(2) (Linux 4.14+)."""
    try:
        return _membarrier_registered() and _membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)
    except KeyError:
        return False
