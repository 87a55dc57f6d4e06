"""The stack a probe hit came from, for probes that ask (``stack=True``).

In a kernel handler: ``stack_trace_save_user()`` and ``stack_trace_save()``
(kernel/stacktrace.c). Live, the BPF program records the stack at the hit
(``bpf_get_stackid()``: frame pointers, so code built without them shows fewer frames), and
these calls return its addresses. ``symbolize_user(addrs, pid)`` names each by the ELF
symbol of the file mapped there (function+offset, file); ``symbolize_kernel(addrs)`` by
/proc/kallsyms.
"""

from __future__ import annotations

import bisect
import errno
import functools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from kuprobe import context
from kuprobe.context import StacksAtHit
from kuprobe.errors import ProbeError


@dataclass(frozen=True)
class Frame:
    addr: int
    symbol: str | None  # the function, if known
    offset: int  # from the function's start (or into the file, without one)
    file: str | None  # the mapped file (user) or the module ("kernel")

    def __str__(self) -> str:
        where = f" ({os.path.basename(self.file)})" if self.file else ""
        if self.symbol is None:
            return f"{self.addr:#x}{where}"
        return f"{self.symbol}+{self.offset:#x}{where}"


def _stacks() -> StacksAtHit:
    s = context.stacks()
    if s is None:
        raise ProbeError(
            errno.ENOENT,
            "this hit has no recorded stack",
            hint="register the probe with stack=True (kuprobe trace --stack)",
        )
    return s


def stack_trace_save_user() -> list[int]:
    """The user stack at the hit, innermost first (a uprobe's; ENOENT if not recorded)."""
    fetch = _stacks().user
    if fetch is None:
        raise ProbeError(errno.ENOENT, "no user stack was recorded at this hit")
    return fetch()


def stack_trace_save() -> list[int]:
    """The kernel stack at the hit, innermost first (a kprobe's)."""
    fetch = _stacks().kernel
    if fetch is None:
        raise ProbeError(errno.ENOENT, "no kernel stack was recorded at this hit")
    return fetch()


# --- symbols ----------------------------------------------------------------------------

_MAPS_TTL = 1.0
_maps: dict[int, tuple[float, list[tuple[int, int, int, str]]]] = {}


def _mappings(pid: int) -> list[tuple[int, int, int, str]]:
    """(start, end, file offset, path) of the file mappings of ``pid``, read at most once a
    second (the dispatcher symbolizes many events of one process)."""
    now = time.monotonic()
    hit = _maps.get(pid)
    if hit is not None and now - hit[0] < _MAPS_TTL:
        return hit[1]
    out: list[tuple[int, int, int, str]] = []
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].startswith("/"):
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    out.append((lo, hi, int(parts[2], 16), parts[5].rstrip("\n")))
    except OSError:
        pass  # the process is gone: addresses stay unnamed
    if len(_maps) > 1024:
        _maps.clear()
    _maps[pid] = (now, out)
    return out


@functools.lru_cache(maxsize=65536)
def _symbol_at(path: str, file_off: int) -> tuple[str, int] | None:
    """(function, offset in it) at ``file_off`` of the ELF file at ``path``."""
    from kuprobe.elf import open_image

    try:
        elf = open_image(path)
        vaddr = elf.offset_to_vaddr(file_off)
        sym = elf.symbol_at(vaddr)
    except (ProbeError, OSError):
        return None
    return None if sym is None else (sym.name, vaddr - sym.value)


def symbolize_user(addrs: Sequence[int], pid: int) -> list[Frame]:
    """Each address named by the ELF symbol of the file ``pid`` maps there."""
    maps = _mappings(pid)
    frames: list[Frame] = []
    for a in addrs:
        frame = Frame(a, None, 0, None)
        for lo, hi, off, path in maps:
            if lo <= a < hi:
                file_off = a - lo + off
                named = _symbol_at(f"/proc/{pid}/root{path}", file_off)
                if named is None:
                    frame = Frame(a, None, file_off, path)
                else:
                    frame = Frame(a, named[0], named[1], path)
                break
        frames.append(frame)
    return frames


@functools.lru_cache(maxsize=1)
def _kallsyms() -> tuple[list[int], list[str], list[str]]:
    addrs: list[int] = []
    names: list[str] = []
    mods: list[str] = []
    with open("/proc/kallsyms") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] in "tTwW":
                addrs.append(int(parts[0], 16))
                names.append(parts[2])
                mods.append(parts[3].strip("[]") if len(parts) > 3 else "kernel")
    order = sorted(range(len(addrs)), key=addrs.__getitem__)
    return [addrs[i] for i in order], [names[i] for i in order], [mods[i] for i in order]


def symbolize_kernel(addrs: Sequence[int]) -> list[Frame]:
    """Each address named by /proc/kallsyms (root sees the addresses)."""
    try:
        table, names, mods = _kallsyms()
    except OSError:
        return [Frame(a, None, 0, None) for a in addrs]
    frames = []
    for a in addrs:
        i = bisect.bisect_right(table, a) - 1
        if i < 0 or not table[i]:
            frames.append(Frame(a, None, 0, None))
        else:
            frames.append(Frame(a, names[i], a - table[i], mods[i]))
    return frames
