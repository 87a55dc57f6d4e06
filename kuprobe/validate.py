"""The checks of what a caller hands a probe, before anything is looked up.

A symbol name (what GNU as allows), an offset or address (an int, not negative), a uprobe's
path (str, bytes or os.PathLike, no NUL byte), and a kprobe's target: symbol_name (+ offset)
or addr, as kernel/kprobes.c: _kprobe_addr() takes it. Live, model and ``resolve.py`` call
these, so both backends refuse the same input with the same errno.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Any

from kuprobe.errors import ProbeError

# What a C or assembler symbol may be called (GNU as: letters, digits, _ . $; @ for versions).
SYMBOL_RE = re.compile(r"^[A-Za-z_.$][A-Za-z0-9_.$@]*$")


def check_symbol_name(name: object, what: str = "symbol_name") -> str:
    if not isinstance(name, str) or not SYMBOL_RE.fullmatch(name) or len(name) > 512:
        raise ProbeError(
            errno.EINVAL,
            f"{what} {name!r} is not a symbol name (letters, digits, _ . $ @)",
        )
    return name


def check_offset(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProbeError(errno.EINVAL, f"{what} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ProbeError(errno.EINVAL, f"{what} {value} is negative")
    return value


def as_path(path: object) -> str:
    """A str or bytes path or os.PathLike as the str the kernel gets."""
    if isinstance(path, bytes | os.PathLike):
        path = os.fsdecode(path)
    if not isinstance(path, str) or not path:
        raise ProbeError(
            errno.EINVAL,
            f"a Uprobe needs the path of an executable file, not {path!r}",
        )
    if "\0" in path:
        raise ProbeError(errno.EINVAL, f"{path!r}: a path cannot hold a NUL byte")
    return path


def check_kprobe_target(p: Any) -> tuple[str | None, int]:
    """kernel/kprobes.c: _kprobe_addr(): a kprobe names symbol_name (+ offset) or addr, not
    both and not neither. Returns (symbol_name, offset) or (None, addr), each checked."""
    if (p.symbol_name is None) == (p.addr is None):
        raise ProbeError(
            errno.EINVAL,
            "give a kprobe either symbol_name (+ offset) or addr, not "
            + ("both" if p.symbol_name is not None else "neither"),
            probe=p,
        )
    if p.symbol_name is not None:
        return check_symbol_name(p.symbol_name), check_offset(p.offset, "offset")
    if p.offset:
        raise ProbeError(errno.EINVAL, "offset goes with symbol_name, not addr", probe=p)
    return None, check_offset(p.addr, "addr")
