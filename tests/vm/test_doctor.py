"""`kuprobe doctor` in the guest: every check passes on a kernel with kprobes (x86_64 and
arm64 alike: the arch, BPF, ring buffer, kprobe and uprobe PMUs, BCC, the headers)."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

pytestmark = pytest.mark.vm


def _checks() -> list[Any]:
    # kuprobe.doctor on this branch; kuprobe.live.checks once the commands moved to kuprobe/cli.
    for name in ("kuprobe.live.checks", "kuprobe.doctor"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return list(module.checks())
    raise AssertionError("no doctor checks module")


def test_every_doctor_check_passes(guest_arch: str) -> None:
    failed = [(c.name, c.detail) for c in _checks() if not c.ok]
    assert failed == [], f"{guest_arch} guest: {failed}"
