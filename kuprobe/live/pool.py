"""The compiled probe program (kuprobe/bpf_programs/probe_pool.bpf.c), its maps and its slots.

One BCC compile per process. Each registered probe takes a slot: its attachments carry the
slot number as their BPF cookie, and its ``kuprobe_cfg`` entry says what the program does
(stream events or only count, entry or return, which process). Registering 20 probes costs
one compile and 20 attaches.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from collections.abc import Sequence
from typing import Any

from kuprobe.errors import ProbeError
from kuprobe.live import bcc
from kuprobe.live.bpf import BPF_MAP_TYPE_RINGBUF, bpf_map_works
from kuprobe.live.codegen import PROGRAM, PoolSource, render_pool
from kuprobe.live.events import KUPROBE_CFG_OFF, host_ip_index, host_nregs, host_sp_index
from kuprobe.live.ringbuf import RingBufReader
from kuprobe.live.uprobe_multi import BPF_TRACE_UPROBE_MULTI, uprobe_multi_works

DEFAULT_SLOTS = 1024  # slots cost map entries only, not compile time; more pools past that
DEFAULT_RINGBUF_PAGES = 4096  # 16 MiB: ~47k events of slack for a burst


class ProbePool:
    def __init__(
        self, *, nslots: int = DEFAULT_SLOTS, ringbuf_pages: int = DEFAULT_RINGBUF_PAGES
    ) -> None:
        if not bpf_map_works(BPF_MAP_TYPE_RINGBUF, 0, 0, mmap.PAGESIZE):
            raise ProbeError(
                errno.EOPNOTSUPP,
                f"this kernel ({os.uname().release}) has no BPF ring buffer (Linux 5.8+), "
                "which kuprobe delivers events through",
                hint="run on a newer kernel, or in kuprobe's VM (`kuprobe vm run`)",
            )
        src: PoolSource = render_pool(
            nslots=nslots,
            ringbuf_pages=ringbuf_pages,
            nregs=host_nregs(),
            sp_index=host_sp_index(),
            ip_index=host_ip_index(),
        )
        self.nslots = nslots
        self.bpf: Any = bcc.compile_module(src.text, list(src.cflags))
        self._cfg = self.bpf[b"kuprobe_cfg"]
        self._counts = self.bpf[b"kuprobe_counts"]
        self._removed = self.bpf[b"kuprobe_removed"]
        self._capcfg = self.bpf[b"kuprobe_capcfg"]
        self._stacks = self.bpf[b"kuprobe_stacks"]
        self._inflight = self.bpf[b"kuprobe_inflight"]
        rb = self.bpf[b"kuprobe_events"]
        self.ring = RingBufReader(rb.map_fd, ringbuf_pages * mmap.PAGESIZE)
        self._free = list(range(nslots - 1, -1, -1))
        self._func_ids = 0  # the last func_id given (KUPROBE_CFG_FUNC)
        self._prog_fds: dict[bool, int] = {}
        self._uprobe_multi: bool | None = None
        self._baseline: dict[int, tuple[int, int]] = {}
        self.closed = False

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def new_func_id(self) -> int:
        """A key of kuprobe_funcs no registration of this pool has used: an entry slot and
        its return slot share it (KUPROBE_CFG_FUNC), and a key left in the LRU map by an
        earlier registration, or a slot reused, never answers for another function."""
        self._func_ids = self._func_ids % 0xFFFFFFFF + 1
        return self._func_ids

    def acquire(self, *, flags: int, tgid: int, func_id: int = 0) -> int:
        """Take a slot, configure it, and load its program; returns the slot number."""
        if not self._free:
            raise ProbeError(errno.ENOSPC, "probe pool is full")
        slot = self._free.pop()
        try:
            self._baseline[slot] = self._read_counts(slot)
            self._cfg[ctypes.c_int(slot)] = self._cfg.Leaf(flags, tgid, func_id)
        except BaseException:
            self._free.append(slot)
            raise
        return slot

    def prog_fd(self, *, uprobe_multi: bool = False) -> int:
        """The program, loaded on first use: for perf-event links, or for uprobe_multi links
        (the kernel wants the attach type at load time)."""
        if uprobe_multi not in self._prog_fds:
            self._prog_fds[uprobe_multi] = self._load(PROGRAM, uprobe_multi)
        return self._prog_fds[uprobe_multi]

    def _load(self, name: str, uprobe_multi: bool) -> int:
        attach = BPF_TRACE_UPROBE_MULTI if uprobe_multi else -1
        try:
            fn = self.bpf.load_func(name.encode(), bcc.kprobe_prog_type(), attach_type=attach)
        except Exception as e:  # BCC raises a bare Exception
            raise OSError(errno.EINVAL, f"loading {name}: {e}") from e
        # BCC caches one load per name and closes it at cleanup; we keep both variants and
        # close them ourselves (a stray close could hit a reused fd number).
        self.bpf.funcs.pop(name.encode(), None)
        return int(fn.fd)

    def uprobe_multi(self) -> bool:
        """Whether this kernel attaches uprobes as uprobe_multi links (Linux 6.6+)."""
        if self._uprobe_multi is None:
            try:
                fd = self.prog_fd(uprobe_multi=True)
            except OSError:
                self._uprobe_multi = False
            else:
                self._uprobe_multi = uprobe_multi_works(fd)
        return self._uprobe_multi

    def set_off(self, slot: int, off: bool) -> None:
        """KUPROBE_CFG_OFF: the slot's program counts and records nothing while set."""
        cfg = self._cfg[ctypes.c_int(slot)]
        cfg.flags = cfg.flags | KUPROBE_CFG_OFF if off else cfg.flags & ~KUPROBE_CFG_OFF
        self._cfg[ctypes.c_int(slot)] = cfg

    def inflight(self, slot: int) -> int:
        """Runs of the program for ``slot`` in progress now, over every CPU."""
        return sum(int(v) for v in self._inflight[ctypes.c_int(slot)])

    def set_captures(self, slot: int, captures: Sequence[tuple[int, ...]]) -> None:
        """The slot's kuprobe_capcfg entry: per capture (kind, space, src, mask32, index,
        offset, size), integers only."""
        leaf = self._capcfg.Leaf()
        for i, (kind, space, src, mask32, index, offset, size) in enumerate(captures):
            c = leaf.cap[i]
            c.kind, c.space, c.src, c.mask32 = kind, space, src, mask32
            c.index, c.offset, c.size = index, offset, size
        self._capcfg[ctypes.c_int(slot)] = leaf

    def stack(self, stack_id: int) -> list[int]:
        """The addresses of stack ``stack_id`` in kuprobe_stacks, innermost first."""
        return [int(a) for a in self._stacks.walk(stack_id)]

    def release(self, slot: int) -> None:
        self._cfg[ctypes.c_int(slot)] = self._cfg.Leaf()
        self._capcfg[ctypes.c_int(slot)] = self._capcfg.Leaf()
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
        try:
            self._removed[key] = ctypes.c_uint8(1)
        except Exception as e:  # BCC raises a bare Exception; the map holds 4,096 entries
            raise OSError(errno.E2BIG, f"kuprobe_removed: {e}") from e

    def forget_removed(self, slot: int) -> None:
        for key in list(self._removed.keys()):
            if key.slot == slot:
                del self._removed[key]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ring.close()
        for fd in self._prog_fds.values():
            os.close(fd)
        self._prog_fds.clear()
        self.bpf.cleanup()
