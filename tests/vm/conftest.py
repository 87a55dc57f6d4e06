"""Fixtures of the VM tests: they run where kprobes exist (`kuprobe vm test`, or a Vagrant box).

Elsewhere every test here skips, saying which capability is missing.
"""

from __future__ import annotations

import bisect
import errno
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TRACEFS = Path("/sys/kernel/tracing")
KPROBES_DEBUGFS = Path("/sys/kernel/debug/kprobes")
ORACLE_GROUP = "kuprobe_oracle"


def _missing() -> str | None:
    release = os.uname().release
    if os.geteuid() != 0:
        return "live kprobes need root"
    if not (TRACEFS / "kprobe_events").exists():
        return (
            f"this kernel ({release}) has no kprobes (or tracefs is not mounted): "
            "run `kuprobe vm test`"
        )
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC (Debian's python3-bpfcc) is not importable"
    return None


@pytest.fixture(scope="session", autouse=True)
def _require_kprobes() -> None:
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)


@dataclass(frozen=True)
class KernelSymbols:
    """/proc/kallsyms, sorted: a function's address and size (up to the next symbol)."""

    addrs: list[int]
    names: list[str]
    by_name: dict[str, tuple[int, str]]

    def address(self, name: str) -> int:
        return self.by_name[name][0]

    def kind(self, name: str) -> str:
        return self.by_name[name][1]

    def size(self, name: str) -> int:
        addr = self.address(name)
        i = bisect.bisect_right(self.addrs, addr)
        while i < len(self.addrs) and self.addrs[i] == addr:
            i += 1
        return self.addrs[i] - addr


@pytest.fixture(scope="session")
def kallsyms() -> KernelSymbols:
    rows: list[tuple[int, str, str]] = []
    for line in Path("/proc/kallsyms").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:  # built-in symbols only (no [module])
            rows.append((int(parts[0], 16), parts[1], parts[2]))
    rows.sort()
    assert rows and rows[-1][0] != 0, "kallsyms shows no addresses (kptr_restrict?)"
    by_name: dict[str, tuple[int, str]] = {}
    for addr, kind, name in rows:
        by_name.setdefault(name, (addr, kind))
    return KernelSymbols([r[0] for r in rows], [r[2] for r in rows], by_name)


@pytest.fixture(scope="session")
def vmlinux() -> Path:
    """The guest's uncompressed kernel image (the VM's builder puts it in /boot)."""
    path = Path(f"/boot/vmlinux-{os.uname().release}")
    if not path.is_file():
        pytest.skip(f"no {path}: the kernel's real bytes are not available here")
    return path


@pytest.fixture(scope="session")
def kernel_function_bytes(
    vmlinux: Path, kallsyms: KernelSymbols
) -> Callable[[str], tuple[int, bytes]]:
    """name -> (address, the function's bytes as the vmlinux image has them)."""
    from kuprobe.elf import ElfImage

    image = ElfImage(str(vmlinux))

    def read(name: str) -> tuple[int, bytes]:
        addr = kallsyms.address(name)
        return addr, image.read_vaddr(addr, kallsyms.size(name))

    return read


@pytest.fixture(scope="session")
def blacklisted_function(kallsyms: KernelSymbols) -> str:
    """A function in the kernel's kprobe blacklist (NOKPROBE_SYMBOL and friends)."""
    for line in (KPROBES_DEBUGFS / "blacklist").read_text().splitlines():
        name = line.split()[-1]
        if name in kallsyms.by_name and kallsyms.kind(name) in "tT":
            return name
    pytest.skip("the kprobe blacklist names no function")


def tracefs_errno(spec: str) -> int:
    """The errno the kernel gives for a tracefs kprobe on `spec` (0: it registers).

    The oracle for what register_kprobe() returns: trace_kprobe registers a real kprobe.
    """
    fd = os.open(TRACEFS / "kprobe_events", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"p:{ORACLE_GROUP}/probe {spec}\n".encode())
    except OSError as e:
        return e.errno or errno.EIO
    else:
        os.write(fd, f"-:{ORACLE_GROUP}/probe\n".encode())
        return 0
    finally:
        os.close(fd)


@pytest.fixture
def kernel_errno() -> Callable[[str], int]:
    return tracefs_errno


def kprobe_events() -> list[str]:
    return (TRACEFS / "kprobe_events").read_text().splitlines()


def registered_kprobes() -> list[str]:
    """/sys/kernel/debug/kprobes/list: every kprobe the kernel holds, perf-made ones too."""
    path = KPROBES_DEBUGFS / "list"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def kernel_probe_state() -> Callable[[], tuple[list[str], list[str]]]:
    return lambda: (kprobe_events(), registered_kprobes())


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """The test leaves no kprobe behind in the kernel.

    The kernel frees a perf-event kprobe when the event's last reference goes, and
    unoptimizes an optimized one from delayed work: give it a few seconds to settle.
    """
    before = set(registered_kprobes())
    yield
    deadline = time.monotonic() + 5
    while (left := set(registered_kprobes()) - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"kprobes left registered: {sorted(left)}"
