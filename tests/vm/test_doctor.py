"""`kuprobe doctor` in the guest: every check passes on a kernel with kprobes (x86_64 and
arm64 alike: the arch, BPF, ring buffer, kprobe and uprobe PMUs, BCC, the headers, the
compile's private view)."""

from __future__ import annotations

import pytest

from kuprobe.live.checks import checks

pytestmark = pytest.mark.vm


def test_every_doctor_check_passes(guest_arch: str) -> None:
    failed = [(c.name, c.detail) for c in checks() if not c.ok]
    assert failed == [], f"{guest_arch} guest: {failed}"
