"""Live kprobes on real kernel functions, with deterministic triggers from this process."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

import pytest

from kuprobe import (
    Kprobe,
    Kretprobe,
    ProbeError,
    PtRegs,
    current,
    disable_kprobe,
    enable_kprobe,
    register_kprobe,
    register_kprobes,
    register_kretprobes,
    regs_get_kernel_argument,
    regs_return_value,
    unregister_kprobe,
    unregister_kprobes,
    unregister_kretprobes,
)
from kuprobe.insn import boundaries

from .conftest import GuestFacts, syscall_symbol

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("no_leftovers")]

N = 25
AT_FDCWD = -100
OPEN = "do_sys_openat2"  # fs/open.c: (int dfd, const char __user *filename, struct open_how *)
# kernel/sys.c: getpgid(2); nothing else in the idle guest calls it, so counts are exact.
GETPGID = syscall_symbol("getpgid")

libc = ctypes.CDLL(None, use_errno=True)


def s64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value


def s32(value: int) -> int:
    value &= (1 << 32) - 1
    return value - (1 << 32) if value >> 31 else value


def recorder(seen: list[int]) -> Callable[[Kprobe, PtRegs], int]:
    """A pre_handler appending the trapped task's tgid to `seen`."""

    def pre(p: Kprobe, regs: PtRegs) -> int:
        seen.append(current().tgid)
        return 0

    return pre


def getpgid_n(n: int) -> None:
    for _ in range(n):
        os.getpgid(0)


def test_open_of_missing_path_arguments_and_return_value() -> None:
    """N opens of a missing path: the kprobe reads dfd and the filename from the arguments,
    the kretprobe sees -ENOENT; exactly N of each from this pid."""
    me = os.getpid()
    path = f"/nonexistent/kuprobe-vm-{me}".encode()
    buf = ctypes.create_string_buffer(path)  # alive until the handlers have run
    entries: list[tuple[int, bytes, int]] = []
    returns: list[int] = []

    def ours(regs: PtRegs) -> bool:
        return current().tgid == me and regs_get_kernel_argument(regs, 1) == ctypes.addressof(buf)

    def pre(p: Kprobe, regs: PtRegs) -> int:
        if ours(regs):
            dfd = s32(regs_get_kernel_argument(regs, 0))
            name = ctypes.string_at(regs_get_kernel_argument(regs, 1))
            entries.append((dfd, name, current().tgid))
        return 0

    def entry(ri: object, regs: PtRegs) -> int:
        return 0 if ours(regs) else 1  # nonzero: no return handler for this call

    def ret(ri: object, regs: PtRegs) -> int:
        returns.append(s64(regs_return_value(regs)))
        return 0

    kp = Kprobe(symbol_name=OPEN, pre_handler=pre)
    rp = Kretprobe(symbol_name=OPEN, handler=ret, entry_handler=entry)
    register_kprobes([kp])
    register_kretprobes([rp])
    try:
        for _ in range(N):
            assert libc.open(buf, os.O_RDONLY) == -1
            assert ctypes.get_errno() == errno.ENOENT
    finally:
        unregister_kprobes([kp])
        unregister_kretprobes([rp])
    assert entries == [(AT_FDCWD, path, me)] * N  # the main thread: tid == pid
    assert returns == [-errno.ENOENT] * N
    assert kp.hits >= N and rp.hits >= N  # the kernel counts every opener
    assert kp.nmissed == 0 and kp.lost == 0 and rp.lost == 0


def test_exact_hit_count() -> None:
    calls: list[int] = []
    kp = Kprobe(symbol_name=GETPGID, pre_handler=recorder(calls))
    register_kprobe(kp)
    try:
        getpgid_n(N)
    finally:
        unregister_kprobe(kp)
    assert kp.hits == N
    assert calls == [os.getpid()] * N


def test_two_kprobes_on_one_address_both_fire() -> None:
    a: list[int] = []
    b: list[int] = []
    kpa = Kprobe(symbol_name=GETPGID, pre_handler=recorder(a))
    kpb = Kprobe(symbol_name=GETPGID, pre_handler=recorder(b))
    register_kprobes([kpa, kpb])
    try:
        getpgid_n(N)
    finally:
        unregister_kprobes([kpa, kpb])
    assert (kpa.hits, kpb.hits) == (N, N)
    assert (len(a), len(b)) == (N, N)


def test_disable_and_enable() -> None:
    seen: list[int] = []
    kp = Kprobe(symbol_name=GETPGID, pre_handler=recorder(seen))
    register_kprobe(kp)
    try:
        getpgid_n(3)
        disable_kprobe(kp)
        getpgid_n(N)
        enable_kprobe(kp)
        getpgid_n(5)
    finally:
        unregister_kprobe(kp)
    assert kp.hits == 8
    assert len(seen) == 8


def test_offset_inside_an_instruction_is_refused(
    kernel_function_bytes: Callable[[str], tuple[int, bytes]],
    guest_arch: str,
    guest_facts: GuestFacts,
    kernel_errno: Callable[[str], int],
) -> None:
    """Decoded from the function's start: an instruction's first byte registers, a byte
    inside it is refused — EILSEQ on x86_64 (can_probe() decodes the function), EINVAL on
    arm64 (a misaligned address) — and with the errno a tracefs kprobe there gets."""
    _addr, code = kernel_function_bytes(OPEN)
    # Past the ftrace site at the entry (which the kernel treats on its own).
    start, _size = next(
        (o, n) for o, n in boundaries(guest_arch, code) if o >= guest_facts.entry_bytes and n > 1
    )
    inside = Kprobe(symbol_name=OPEN, offset=start + 1)
    with pytest.raises(ProbeError) as info:
        register_kprobe(inside)
    assert info.value.errno == guest_facts.inside_insn_errno, info.value
    assert kernel_errno(f"{OPEN}+{start + 1}") == guest_facts.inside_insn_errno
    assert not inside.registered
    at = Kprobe(symbol_name=OPEN, offset=start)
    register_kprobe(at)
    unregister_kprobe(at)


def test_batch_with_a_bad_probe_registers_none() -> None:
    good = Kprobe(symbol_name=GETPGID)
    bad = Kprobe(symbol_name="kuprobe_no_such_function")
    with pytest.raises(ProbeError):
        register_kprobes([good, bad])
    assert not good.registered and not bad.registered


def test_refused_with_the_kernels_errno(
    blacklisted_function: str, kernel_errno: Callable[[str], int]
) -> None:
    """A blacklisted function, a data symbol and a missing symbol: refused with the errno
    the kernel gives a tracefs kprobe on the same place."""
    targets = [blacklisted_function, "jiffies", "kuprobe_no_such_function"]
    for target in targets:
        expected = kernel_errno(target)
        assert expected != 0, f"the kernel accepts a kprobe on {target}"
        kp = Kprobe(symbol_name=target)
        with pytest.raises(ProbeError) as info:
            register_kprobe(kp)
        assert info.value.errno == expected, (target, info.value)
