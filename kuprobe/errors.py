"""The one exception kuprobe raises for a probe the kernel would refuse."""

from __future__ import annotations

import errno as _errno
import os
from typing import Any


class ProbeError(OSError):
    """A probe was refused: ``errno`` is what the kernel would return, ``hint`` what to do."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        probe: Any = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(code, message)
        self.probe = probe
        self.hint = hint

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno or 0, str(self.errno))
        text = f"[{name}] {self.strerror}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


def errno_message(code: int) -> str:
    """The C library's text for ``code`` (``ENOENT`` -> "No such file or directory")."""
    return os.strerror(code)
