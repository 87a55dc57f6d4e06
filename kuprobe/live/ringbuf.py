"""Bulk reader of a BPF ring buffer (kernel/bpf/ringbuf.c), mmapped, no callback per event.

Layout: page 0 is the consumer position (ours to write); then the producer position page and
the data area, mapped twice back to back so a record that wraps reads as one run. Each record
is an 8-byte header (``len`` with BUSY bit 31 and DISCARD bit 30, then ``pg_off``), its data,
padded to 8 bytes. The programs submit with BPF_RB_NO_WAKEUP; this reader polls.
"""

from __future__ import annotations

import mmap
from collections.abc import Collection

from kuprobe.errors import KuprobeValueError

BPF_RINGBUF_BUSY_BIT = 1 << 31
BPF_RINGBUF_DISCARD_BIT = 1 << 30
BPF_RINGBUF_HDR_SZ = 8


class RingBufReader:
    """The single consumer of one ring buffer map."""

    def __init__(self, map_fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1):
            raise KuprobeValueError(f"ring buffer size {size} is not a power of two")
        page = mmap.PAGESIZE
        self.size = size
        self._mask = size - 1
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._prod = mmap.mmap(
            map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._data = memoryview(self._prod)[page:]
        # One native 8-byte load or store each (struct's "<Q" moves a byte at a time, and the
        # kernel must never see a torn position).
        self._cons_word = memoryview(self._cons).cast("Q")
        self._prod_word = memoryview(self._prod)[:8].cast("Q")
        self.consumer_pos = int(self._cons_word[0])

    def producer_pos(self) -> int:
        return int(self._prod_word[0])

    def read(self, record_len: int) -> tuple[memoryview, int]:
        """Take every committed record, all of data length ``record_len`` (kuprobe's events
        have one size): (their bytes, header included, each ``stride`` long; their count).

        The consumer position advances at once (the bytes are copied out), so the kernel can
        reuse the space while Python handles the batch. Stops at the first record that is
        still reserved (BUSY) or is not ``record_len`` long.
        """
        stride = (record_len + BPF_RINGBUF_HDR_SZ + 7) & ~7
        cons = self.consumer_pos
        avail = self.producer_pos() - cons
        if avail < stride:
            return memoryview(b""), 0
        avail -= avail % stride
        start = cons & self._mask
        chunk = memoryview(bytes(self._data[start : start + avail]))
        # The header words of every record, read in C: a committed record's is record_len.
        headers = chunk.cast("I")[:: stride // 4].tolist()
        n = len(headers)
        if headers.count(record_len) != n:
            n = next(i for i, h in enumerate(headers) if h != record_len)
            if n == 0 and not headers[0] & BPF_RINGBUF_BUSY_BIT:
                raise KuprobeValueError(
                    f"ring buffer record of {headers[0]:#x} bytes, not {record_len}"
                )
        end = cons + n * stride
        self._cons_word[0] = end
        self.consumer_pos = end
        return chunk[: n * stride], n

    def read_any(self, record_lens: Collection[int]) -> tuple[memoryview, int, int]:
        """``read()`` for a ring carrying records of several lengths: the run of records
        as long as the first committed one (one of ``record_lens``), and that length."""
        cons = self.consumer_pos
        if self.producer_pos() - cons < BPF_RINGBUF_HDR_SZ:
            return memoryview(b""), 0, 0
        start = cons & self._mask
        first = int(self._data[start : start + 4].cast("I")[0])
        if first & BPF_RINGBUF_BUSY_BIT:
            return memoryview(b""), 0, 0
        if first not in record_lens:
            raise KuprobeValueError(
                f"ring buffer record of {first:#x} bytes, not one of {record_lens}"
            )
        chunk, n = self.read(first)
        return chunk, n, first

    def peek_words(self, end: int, word: int) -> list[int]:
        """Without consuming: the 32-bit word at data offset ``4 * word`` of every committed
        record between the consumer position and ``end`` (e.g. the slot of each event), each
        record walked by its own length (plain and captured events differ)."""
        pos, stop = self.consumer_pos, min(end, self.producer_pos())
        out: list[int] = []
        while stop - pos >= BPF_RINGBUF_HDR_SZ:
            start = pos & self._mask
            head = int(self._data[start : start + 4].cast("I")[0])
            if head & BPF_RINGBUF_BUSY_BIT:
                break
            length = head & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT)
            if not head & BPF_RINGBUF_DISCARD_BIT:
                at = (start + BPF_RINGBUF_HDR_SZ + 4 * word) & self._mask
                out.append(int(self._data[at : at + 4].cast("I")[0]))
            pos += (length + BPF_RINGBUF_HDR_SZ + 7) & ~7
        return out

    def close(self) -> None:
        self._cons_word.release()
        self._prod_word.release()
        self._data.release()
        self._prod.close()
        self._cons.close()
