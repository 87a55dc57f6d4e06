"""Fixtures of the VM tests: they run where kprobes exist (`kuprobe vm test [--arch arm64]`,
or a Vagrant box).

One test body serves every guest: the running kernel's arch is a parameter (`guest_arch`),
and what differs per arch (syscall wrapper names, the errno of an offset off an instruction,
where the kernel's bytes come from) is in `GUEST_FACTS`. A test that applies to some arches
only is marked ``@pytest.mark.arches("x86_64")`` and is deselected elsewhere (not skipped).
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

from kuprobe.arch import host_arch
from kuprobe.crosscheck._kprobes import tracefs_errno
from kuprobe.live.events import LIVE_HOSTS

TRACEFS = Path("/sys/kernel/tracing")
KPROBES_DEBUGFS = Path("/sys/kernel/debug/kprobes")
PROJECT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class GuestFacts:
    """What the VM tests need to know of one guest arch."""

    # The syscall entry wrapper of SYSCALL_DEFINE (arch/x86/include/asm/syscall_wrapper.h,
    # arch/arm64/include/asm/syscall_wrapper.h): __x64_sys_getpgid, __arm64_sys_getpgid.
    syscall_prefix: str
    # The errno of a kprobe whose offset falls inside an instruction: x86 decodes the
    # function (arch/x86/kernel/kprobes/core.c: can_probe() -> -EILSEQ); arm64 instructions
    # are 4 bytes and arch_prepare_kprobe() refuses a misaligned address with -EINVAL
    # (arch/arm64/kernel/probes/kprobes.c).
    inside_insn_errno: int
    # Bytes of a kprobe's entry the kernel treats on its own (x86: the ftrace nop5; arm64:
    # the patchable-function-entry nops ftrace uses, with BTI a `bti c` before them).
    entry_bytes: int


GUEST_FACTS = {
    "x86_64": GuestFacts("__x64_sys_", errno.EILSEQ, 5),
    "arm64": GuestFacts("__arm64_sys_", errno.EINVAL, 12),
}
_HOST = host_arch()
GUEST_ARCH = _HOST.name if _HOST is not None and _HOST in LIVE_HOSTS else ""


def syscall_symbol(name: str) -> str:
    """The running kernel's entry wrapper of syscall `name` (e.g. getpgid)."""
    return GUEST_FACTS[GUEST_ARCH or "x86_64"].syscall_prefix + name


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "arches(*names): the VM test applies to these guest arches only"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests that do not apply to this guest's arch (a skip would read as a
    missing capability)."""
    if not GUEST_ARCH:
        return
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("arches")
        applies = marker is None or GUEST_ARCH in marker.args
        (keep if applies else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session")
def guest_arch() -> str:
    """The running kernel's arch, in kuprobe's names (x86_64, arm64)."""
    return GUEST_ARCH


@pytest.fixture(scope="session")
def guest_facts(guest_arch: str) -> GuestFacts:
    return GUEST_FACTS[guest_arch]


@pytest.fixture(scope="session")
def targets(guest_arch: str) -> Path:
    """tests/targets/build/<arch>/ of this guest (built on the host by tests/targets/build.sh,
    shared over 9p)."""
    path = PROJECT / "tests" / "targets" / "build" / guest_arch
    assert (path / "target-static").is_file(), f"{path}/target-static: run tests/targets/build.sh"
    return path


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
def vmlinux(guest_arch: str) -> Path:
    """The guest's uncompressed kernel image (the VM's builder puts it in /boot): the ELF
    vmlinux on x86_64, the raw Image (bytes from _text on) on arm64."""
    name = "vmlinux" if guest_arch == "x86_64" else "Image"
    path = Path(f"/boot/{name}-{os.uname().release}")
    # The VM's builder puts it there (kuprobe/vm/image.py: _add_kernel): its absence is a
    # broken image, not a missing capability.
    assert path.is_file(), f"no {path}: the image's builder did not put the kernel's bytes there"
    return path


@pytest.fixture(scope="session")
def kernel_function_bytes(
    vmlinux: Path, kallsyms: KernelSymbols, guest_arch: str
) -> Callable[[str], tuple[int, bytes]]:
    """name -> (address, the function's bytes as the kernel image file has them)."""
    if guest_arch == "arm64":
        # arch/arm64/kernel/head.S, vmlinux.lds.S: the Image is the kernel from its first
        # byte (_text, KIMAGE_VADDR; kallsyms may not name it, but nothing lies below it) on,
        # and with nokaslr the addresses in kallsyms are the link-time ones.
        image_bytes = vmlinux.read_bytes()
        text = kallsyms.by_name["_text"][0] if "_text" in kallsyms.by_name else kallsyms.addrs[0]

        def read_raw(name: str) -> tuple[int, bytes]:
            addr = kallsyms.address(name)
            return addr, image_bytes[addr - text : addr - text + kallsyms.size(name)]

        return read_raw

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
    # Every kernel with kprobes blacklists its own kprobe handlers (NOKPROBE_SYMBOL in
    # kernel/kprobes.c): an empty list means the test cannot test what it says.
    pytest.fail("the kprobe blacklist names no function of kallsyms")


@pytest.fixture
def kernel_errno() -> Callable[[str], int]:
    return tracefs_errno


def kprobe_events() -> list[str]:
    return (TRACEFS / "kprobe_events").read_text().splitlines()


def registered_kprobes() -> list[str]:
    """/sys/kernel/debug/kprobes/list: every kprobe the kernel holds, perf-made ones too.
    A kernel without that file cannot be asked: that fails (an empty list would let
    ``no_leftovers`` pass without looking)."""
    path = KPROBES_DEBUGFS / "list"
    if not path.is_file():
        pytest.fail(f"no {path} (debugfs not mounted, or CONFIG_KPROBES off): cannot see the "
                    "kernel's kprobes")  # fmt: skip
    return path.read_text().splitlines()


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
