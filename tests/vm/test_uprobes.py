"""Live uprobes and uretprobes in the guest, on the test targets built for its arch
(tests/targets/build/<arch>/target-static): counts at every instruction of a function, the
arguments and return values by the arch's ABI, and recursion past the uretprobe limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from kuprobe import (
    PtRegs,
    Uprobe,
    UprobeConsumer,
    register_uprobe,
    regs_get_kernel_argument,
    regs_return_value,
    unregister_uprobe,
)
from kuprobe.elf import ElfImage
from kuprobe.insn import boundaries
from kuprobe.regs import signed

from ..live.helpers import Target

pytestmark = pytest.mark.vm

N = 20
# include/linux/uprobes.h: MAX_URETPROBE_DEPTH; kernel/events/uprobes.c: prepare_uretprobe()
# omits the return probe of deeper calls ("omit uretprobe due to nestedness limit").
MAX_URETPROBE_DEPTH = 64


GUEST_TIMEOUT = 120.0  # seconds a target's run may take in the guest (qemu, maybe TCG)


def run_probed(
    exe: Path, func: str, n: int, arg: int, consumer: UprobeConsumer
) -> tuple[Uprobe, str]:
    """``target wait FUNC N ARG`` run with a uprobe of ``consumer`` on FUNC (its pid only):
    the probe, unregistered, and the target's output."""
    target = Target(exe, func, n, arg, timeout=GUEST_TIMEOUT)
    up = Uprobe(str(exe), symbol_name=func, pid=target.pid, consumer=consumer)
    register_uprobe(up)
    try:
        out = target.go()
    finally:
        target.kill()
        unregister_uprobe(up)
    return up, out


def function_code(exe: Path, name: str) -> bytes:
    with ElfImage(str(exe)) as elf:
        sym = elf.symbols[name]
        return elf.read_vaddr(sym.value, sym.size)


def test_counts_at_every_instruction_of_a_function(targets: Path, guest_arch: str) -> None:
    """add() is straight-line code: a uprobe on each of its instructions fires once per
    call, N times, in this process only."""
    exe = targets / "target-static"
    offsets = [off for off, _n in boundaries(guest_arch, function_code(exe, "add"))]
    assert len(offsets) >= 2
    target = Target(exe, "add", N, 1, timeout=GUEST_TIMEOUT)
    probes = [
        Uprobe(str(exe), symbol_name="add", offset=off, pid=target.pid,
               consumer=UprobeConsumer(handler=lambda uc, regs: 0))
        for off in offsets
    ]  # fmt: skip
    registered: list[Uprobe] = []
    try:
        for up in probes:
            register_uprobe(up)
            registered.append(up)
        target.go()
    finally:
        target.kill()
        for up in registered:
            unregister_uprobe(up)
    assert [up.hits for up in probes] == [N] * len(offsets)
    assert [up.lost for up in probes] == [0] * len(offsets)


def test_arguments_and_return_values(targets: Path) -> None:
    """add(a, 2a) for a = 5..5+N-1: the arguments in the ABI's first two argument registers
    (x0, x1 on arm64; di, si on x86_64) and the return value (x0; ax)."""
    exe = targets / "target-static"
    args: list[tuple[int, int]] = []
    rets: list[int] = []

    def handler(uc: UprobeConsumer, regs: PtRegs) -> int:
        args.append((regs_get_kernel_argument(regs, 0), regs_get_kernel_argument(regs, 1)))
        return 0

    def ret_handler(uc: UprobeConsumer, func: int, regs: PtRegs) -> int:
        rets.append(signed(regs_return_value(regs), 64))
        return 0

    up, out = run_probed(exe, "add", N, 5, UprobeConsumer(handler=handler, ret_handler=ret_handler))
    expected = [5 + i for i in range(N)]
    assert args == [(a, 2 * a) for a in expected]
    assert rets == [3 * a for a in expected]
    assert out.split() == ["add", str(N), str(sum(rets))]
    assert (up.hits, up.ret_hits) == (N, N)


def test_recursion_past_the_uretprobe_limit(targets: Path) -> None:
    """rec(100) under a uretprobe: 101 entries, and returns only for the outermost
    MAX_URETPROBE_DEPTH calls (the kernel omits the deeper ones), innermost first."""
    exe = targets / "target-static"
    entries: list[int] = []
    returns: list[int] = []

    def handler(uc: UprobeConsumer, regs: PtRegs) -> int:
        entries.append(regs_get_kernel_argument(regs, 0))
        return 0

    def ret_handler(uc: UprobeConsumer, func: int, regs: PtRegs) -> int:
        returns.append(regs_return_value(regs))
        return 0

    up, _out = run_probed(
        exe, "rec", 1, 100, UprobeConsumer(handler=handler, ret_handler=ret_handler)
    )
    assert entries == list(range(100, -1, -1))
    # The outermost 64 calls are rec(100)..rec(37), returning 100..37; they return last.
    assert returns == list(range(100 - MAX_URETPROBE_DEPTH + 1, 101))
    assert up.hits == 101 and up.ret_hits == MAX_URETPROBE_DEPTH
