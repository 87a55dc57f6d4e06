"""kuprobe's exceptions: one base, a shallow tree under it.

Catch ``KuprobeError`` to catch anything kuprobe raised. Each subsystem's own errors derive
from it (``kuprobe.cli.spec.SpecError``, ``kuprobe.model.ModelError``, ``kuprobe.vm.VmError``,
``kuprobe.targets.TargetError``); a probe the kernel would refuse is a ``ProbeError``. Where
Python's convention is a built-in exception, kuprobe's derives from it too
(``KuprobeValueError`` is a ``ValueError``), so code that catches the built-in still works.
"""

from __future__ import annotations

import errno as _errno
from typing import Any


class KuprobeError(Exception):
    """Anything kuprobe raises on purpose."""


class KuprobeValueError(KuprobeError, ValueError):
    """A value kuprobe cannot use (an unknown arch, a number out of range); a ValueError too."""


class KuprobeTypeError(KuprobeError, TypeError):
    """An argument of a type kuprobe does not take (a Uprobe given to register_kprobe())."""


class OutsideHandlerError(KuprobeError, RuntimeError):
    """current(), copy_from_user() or a friend called outside a probe handler."""


class ProbeError(KuprobeError, OSError):
    """A probe was refused: ``errno`` is what the kernel would return, ``hint`` what to do."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        probe: Any = None,
        hint: str | None = None,
    ) -> None:
        OSError.__init__(self, code, message)
        self.probe = probe
        self.hint = hint

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno or 0, str(self.errno))
        text = f"[{name}] {self.strerror}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text
