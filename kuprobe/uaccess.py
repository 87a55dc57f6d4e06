"""Memory at the hit, read in a handler with the kernel's own calls.

A kernel handler reads the probed task's memory with ``copy_from_user()``,
``strncpy_from_user()`` (include/linux/uaccess.h) and kernel memory with
``copy_from_kernel_nofault()`` (mm/maccess.c). A live handler runs after the fact, so the BPF
program reads what the probe declares (``Capture``, kuprobe/probes.py) on the spot, and these
calls answer from that: reading anything that was not captured is ``ProbeError(EFAULT)``
saying so, never a late read of the live process. A read that failed at the hit (an unmapped
page) is ``ProbeError(EFAULT)`` too, saying that. In the model, the same calls read the
emulated memory, so one handler runs on both.

Python's forms return the bytes instead of filling a buffer: ``copy_from_user(addr, n)``,
``strncpy_from_user(addr, count)`` (the string without its NUL, at most ``count`` bytes),
``copy_from_kernel_nofault(addr, n)``, ``strncpy_from_kernel_nofault(addr, count)``.
"""

from __future__ import annotations

import errno

from kuprobe import context
from kuprobe.context import MemoryAtHit
from kuprobe.errors import OutsideHandlerError, ProbeError


def _memory() -> MemoryAtHit:
    memory = context.memory()
    if memory is None:
        if context.task() is None:
            raise OutsideHandlerError(
                "copy_from_user() and friends work only inside a probe handler"
            )
        raise ProbeError(
            errno.EFAULT,
            "this probe captured no memory at the hit",
            hint="declare what to read: capture=(Capture('arg0', kind='str'),) on the probe, "
            "or 'arg0:str' in a spec",
        )
    return memory


def _check(addr: int, n: int) -> None:
    if addr < 0 or n < 0:
        raise ProbeError(errno.EINVAL, f"read of {n} bytes at {addr:#x}")


def copy_from_user(addr: int, n: int) -> bytes:
    """``n`` bytes of the probed task's memory at ``addr``, as they were at the hit."""
    _check(addr, n)
    return _memory().read(addr, n, user=True)


def strncpy_from_user(addr: int, count: int) -> bytes:
    """The NUL-terminated string at ``addr`` at the hit, without its NUL, at most ``count``
    bytes (the kernel's strncpy_from_user() returns its length; here it is ``len()``)."""
    _check(addr, count)
    return _memory().read_str(addr, count, user=True)


def copy_from_kernel_nofault(addr: int, n: int) -> bytes:
    """``n`` bytes of kernel memory at ``addr``, as they were at the hit."""
    _check(addr, n)
    return _memory().read(addr, n, user=False)


def strncpy_from_kernel_nofault(addr: int, count: int) -> bytes:
    """The NUL-terminated kernel string at ``addr`` at the hit, without its NUL."""
    _check(addr, count)
    return _memory().read_str(addr, count, user=False)


class CapturedMemory:
    """What a live event carries: per capture, (address, bytes read or -errno, user?)."""

    __slots__ = ("spans",)

    def __init__(self, spans: list[tuple[int, int, bytes, bool]]) -> None:
        self.spans = spans  # (addr, len or -errno, data, user)

    def _span(self, addr: int, n: int, user: bool, string: bool) -> bytes:
        """The captured bytes from ``addr`` on (at least ``n`` unless ``string``)."""
        failed: tuple[int, int] | None = None
        for base, got, data, u in self.spans:
            if u != user:
                continue
            if got < 0:
                if base <= addr < base + 4096:
                    failed = (base, got)
            elif base <= addr < base + got and (string or addr + n <= base + got):
                return data[addr - base : got]
        if failed is not None:
            code = errno.errorcode.get(-failed[1], str(-failed[1]))
            raise ProbeError(
                errno.EFAULT,
                f"the read at {failed[0]:#x} failed at the hit ({code}): nothing is mapped "
                "there, or it was not readable",
            )
        where = "user" if user else "kernel"
        have = ", ".join(f"{b:#x}+{g}" for b, g, _d, _u in self.spans if g >= 0) or "nothing"
        raise ProbeError(
            errno.EFAULT,
            f"{n} bytes of {where} memory at {addr:#x} were not captured at the hit "
            f"(captured: {have})",
            hint="declare it with Capture(...) on the probe (a spec: 'arg0:str', 'arg1:buf64')",
        )

    def read(self, addr: int, n: int, *, user: bool) -> bytes:
        if n == 0:
            return b""
        return self._span(addr, n, user, string=False)[:n]

    def read_str(self, addr: int, count: int, *, user: bool) -> bytes:
        data = self._span(addr, 1, user, string=True)[:count]
        return data.split(b"\0", 1)[0]


class EmulatedMemory:
    """The model's answer: read the emulated memory (``read(addr, n)``) at the hit."""

    __slots__ = ("_read",)

    def __init__(self, read: object) -> None:
        self._read = read

    def read(self, addr: int, n: int, *, user: bool) -> bytes:
        try:
            data = self._read(addr, n)  # type: ignore[operator]
        except Exception as e:
            raise ProbeError(errno.EFAULT, f"{n} bytes at {addr:#x}: not mapped ({e})") from e
        return bytes(data)

    def read_str(self, addr: int, count: int, *, user: bool) -> bytes:
        out = b""
        while len(out) < count:
            step = min(64, count - len(out))
            try:
                chunk = self.read(addr + len(out), step, user=user)
            except ProbeError:
                if not out and step == 1:
                    raise
                if step > 1:  # near the end of a mapping: byte by byte
                    chunk = b""
                    for i in range(step):
                        try:
                            chunk += self.read(addr + len(out) + i, 1, user=user)
                        except ProbeError:
                            if not out and not chunk:
                                raise
                            break
                    if b"\0" not in chunk:
                        return (out + chunk).split(b"\0", 1)[0]
                else:
                    break
            if b"\0" in chunk:
                return (out + chunk).split(b"\0", 1)[0]
            out += chunk
        return out[:count]
