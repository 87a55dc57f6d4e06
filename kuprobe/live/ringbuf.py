"""Bulk reader of a BPF ring buffer (kernel/bpf/ringbuf.c), mmapped, no callback per event.

Layout: page 0 is the consumer position (ours to write); then the producer position page and
the data area, mapped twice back to back so a record that wraps reads as one run. Each record
is an 8-byte header (``len`` with BUSY bit 31 and DISCARD bit 30, then ``pg_off``), its data,
padded to 8 bytes. The programs submit with BPF_RB_NO_WAKEUP; this reader polls.
"""

from __future__ import annotations

import mmap
import struct

BPF_RINGBUF_BUSY_BIT = 1 << 31
BPF_RINGBUF_DISCARD_BIT = 1 << 30
BPF_RINGBUF_HDR_SZ = 8
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class RingBufReader:
    """The single consumer of one ring buffer map."""

    def __init__(self, map_fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        page = mmap.PAGESIZE
        self.size = size
        self._mask = size - 1
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._prod = mmap.mmap(
            map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._data = memoryview(self._prod)[page:]
        self.consumer_pos = _U64.unpack_from(self._cons, 0)[0]

    def producer_pos(self) -> int:
        return int(_U64.unpack_from(self._prod, 0)[0])

    def read(self) -> tuple[bytes, list[int], int]:
        """Take every committed record: (their bytes, offsets of each record's data, end pos).

        The consumer position advances at once (the bytes are copied out), so the kernel can
        reuse the space while Python handles the batch.
        """
        cons = self.consumer_pos
        avail = self.producer_pos() - cons
        if avail <= 0:
            return b"", [], cons
        start = cons & self._mask
        chunk = bytes(self._data[start : start + avail])
        offsets: list[int] = []
        off = 0
        unpack = _U32.unpack_from
        while off < avail:
            hdr = unpack(chunk, off)[0]
            if hdr & BPF_RINGBUF_BUSY_BIT:
                break  # reserved, not yet committed: the rest waits for the next read
            length = hdr & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT)
            if not hdr & BPF_RINGBUF_DISCARD_BIT:
                offsets.append(off + BPF_RINGBUF_HDR_SZ)
            off += (length + BPF_RINGBUF_HDR_SZ + 7) & ~7
        end = cons + off
        _U64.pack_into(self._cons, 0, end)
        self.consumer_pos = end
        return chunk, offsets, end

    def close(self) -> None:
        self._data.release()
        self._prod.close()
        self._cons.close()
