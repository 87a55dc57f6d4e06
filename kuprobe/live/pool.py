"""A compiled pool of probe programs (bpf_programs/probe_pool.bpf.c) and its maps.

One BCC compile gives ``nslots`` programs; each registered probe takes a slot, whose
``kuprobe_cfg`` entry says what the program does (stream events or only count, entry or
return, which process). Registering 20 probes costs one compile and 20 attaches.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from typing import Any

from kuprobe.errors import ProbeError
from kuprobe.live import _bcc, perf
from kuprobe.live.codegen import PoolSource, render_pool
from kuprobe.live.events import KUPROBE_CFG_OFF, host_nregs
from kuprobe.live.ringbuf import RingBufReader

DEFAULT_SLOTS = 64
DEFAULT_RINGBUF_PAGES = 4096  # 16 MiB: ~47k events of slack for a burst


class ProbePool:
    def __init__(
        self, *, nslots: int = DEFAULT_SLOTS, ringbuf_pages: int = DEFAULT_RINGBUF_PAGES
    ) -> None:
        if not perf.bpf_map_works(perf.BPF_MAP_TYPE_RINGBUF, 0, 0, mmap.PAGESIZE):
            raise ProbeError(
                errno.EOPNOTSUPP,
                f"this kernel ({os.uname().release}) has no BPF ring buffer (Linux 5.8+), "
                "which kuprobe delivers events through",
                hint="run on a newer kernel, or in kuprobe's VM (`kuprobe vm run`)",
            )
        src: PoolSource = render_pool(
            nslots=nslots, ringbuf_pages=ringbuf_pages, nregs=host_nregs()
        )
        self.nslots = nslots
        self.bpf: Any = _bcc.compile_module(src.text, list(src.cflags))
        self._cfg = self.bpf[b"kuprobe_cfg"]
        self._counts = self.bpf[b"kuprobe_counts"]
        self._removed = self.bpf[b"kuprobe_removed"]
        rb = self.bpf[b"kuprobe_events"]
        self.ring = RingBufReader(rb.map_fd, ringbuf_pages * mmap.PAGESIZE)
        self._free = list(range(nslots - 1, -1, -1))
        self._prog_fds: dict[int, int] = {}
        self._baseline: dict[int, tuple[int, int]] = {}
        self.closed = False

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def acquire(self, *, flags: int, tgid: int) -> int:
        """Take a slot, configure it, and load its program; returns the slot number."""
        if not self._free:
            raise ProbeError(errno.ENOSPC, "probe pool is full")
        slot = self._free.pop()
        try:
            if slot not in self._prog_fds:
                fn = self.bpf.load_func(
                    PoolSource.slot_function(slot).encode(), _bcc.kprobe_prog_type()
                )
                self._prog_fds[slot] = int(fn.fd)
            self._baseline[slot] = self._read_counts(slot)
            self._cfg[ctypes.c_int(slot)] = self._cfg.Leaf(flags, tgid)
        except BaseException:
            self._free.append(slot)
            raise
        return slot

    def prog_fd(self, slot: int) -> int:
        return self._prog_fds[slot]

    def set_off(self, slot: int, off: bool) -> None:
        """KUPROBE_CFG_OFF: the slot's program counts and records nothing while set."""
        cfg = self._cfg[ctypes.c_int(slot)]
        flags = cfg.flags | KUPROBE_CFG_OFF if off else cfg.flags & ~KUPROBE_CFG_OFF
        self._cfg[ctypes.c_int(slot)] = self._cfg.Leaf(flags, cfg.tgid)

    def release(self, slot: int) -> None:
        self._cfg[ctypes.c_int(slot)] = self._cfg.Leaf(0, 0)
        self._free.append(slot)

    def _read_counts(self, slot: int) -> tuple[int, int]:
        percpu = self._counts[ctypes.c_int(slot)]
        return sum(c.hits for c in percpu), sum(c.lost for c in percpu)

    def counts(self, slot: int) -> tuple[int, int]:
        """(hits, lost) of the slot since it was acquired."""
        hits, lost = self._read_counts(slot)
        base_hits, base_lost = self._baseline.get(slot, (0, 0))
        return hits - base_hits, lost - base_lost

    def mark_removed(self, slot: int, tgid: int) -> None:
        """UPROBE_HANDLER_REMOVE: no more hits of ``slot`` from process ``tgid``."""
        key = self._removed.Key(slot, tgid)
        self._removed[key] = ctypes.c_uint8(1)

    def forget_removed(self, slot: int) -> None:
        for key in list(self._removed.keys()):
            if key.slot == slot:
                del self._removed[key]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ring.close()
        self.bpf.cleanup()
