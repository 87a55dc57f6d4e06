"""The model's prediction against the live kernel, for uprobes on this host.

The same probes (fresh objects of the same description) run on the reference model
(kuprobe.model.Machine, executing the target's real code) and on the live kernel, on the same
ELF file and calls; what each observed must agree.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kuprobe import Uprobe, UprobeConsumer, register_uprobe, unregister_uprobe
from kuprobe.elf import ElfImage
from kuprobe.insn import boundaries
from kuprobe.live.api import unregister_uprobes
from kuprobe.model import Machine
from kuprobe.regs import PtRegs, regs_get_kernel_stack_nth, regs_return_value, signed

from .helpers import Target

pytestmark = pytest.mark.live
ARCHES = ["x86_64", "i386"]


def first_arg(regs: PtRegs) -> int:
    raw = regs.di if regs.arch == "x86_64" else regs_get_kernel_stack_nth(regs, 1)  # type: ignore[attr-defined]
    return signed(raw, 64 if regs.arch == "x86_64" else 32)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("func", ["calls", "sw", "loop_sum"])
def test_hits_at_every_instruction_agree(live: Path, arch: str, func: str) -> None:
    """A count-only uprobe on every instruction: per-offset hits, model vs kernel."""
    exe = live / arch / "target"
    with ElfImage(str(exe)) as elf:
        sym = elf.symbols[func]
        offsets = [o for o, _ in boundaries(arch, elf.read_vaddr(sym.value, sym.size))]
    args = range(3, 3 + 6)

    def probes() -> list[Uprobe]:
        return [Uprobe(str(exe), symbol_name=func, offset=o) for o in offsets]

    model_probes = probes()
    m = Machine.load(str(exe))
    for p in model_probes:
        m.register_uprobe(p)
    try:
        model_results = [m.call(func, a) for a in args]
    finally:
        for p in model_probes:
            m.unregister_uprobe(p)

    live_probes = probes()
    t = Target(exe, func, len(args), args[0])
    for p in live_probes:
        register_uprobe(p)
    try:
        out = t.go()
    finally:
        unregister_uprobes(live_probes)
    assert int(out.split()[-1]) == sum(model_results)  # same results, computed both ways
    model_hits = {o: p.hits for o, p in zip(offsets, model_probes, strict=True)}
    live_hits = {o: p.hits for o, p in zip(offsets, live_probes, strict=True)}
    assert model_hits == live_hits
    assert model_hits[0] == len(args)


@pytest.mark.parametrize("arch", ARCHES)
def test_uretprobe_nesting_limit_agrees(live: Path, arch: str) -> None:
    """rec(100) under a uretprobe: 101 entries, 64 returns (MAX_URETPROBE_DEPTH) on both."""
    exe = live / arch / "target"
    seen: dict[str, list[tuple[int, int]]] = {"model": [], "live": []}

    def probe(side: str) -> Uprobe:
        return Uprobe(
            str(exe),
            symbol_name="rec",
            consumer=UprobeConsumer(
                handler=lambda uc, regs: seen[side].append((0, first_arg(regs))) or 0,
                ret_handler=lambda uc, f, regs: seen[side].append(
                    (1, signed(regs_return_value(regs), 64 if arch == "x86_64" else 32))
                )
                or 0,
            ),
        )

    mp = probe("model")
    m = Machine.load(str(exe))
    m.register_uprobe(mp)
    try:
        assert m.call("rec", 100) == 100
    finally:
        m.unregister_uprobe(mp)

    lp = probe("live")
    register_uprobe(lp)
    try:
        out = subprocess.run([str(exe), "rec", "1", "100"], capture_output=True, text=True)
    finally:
        unregister_uprobe(lp)
    assert out.stdout.split() == ["rec", "1", "100"]
    assert (mp.hits, mp.ret_hits) == (lp.hits, lp.ret_hits) == (101, 64)
    assert seen["model"] == seen["live"]
    # entries count down 100..0; only the outermost 64 calls had their return hijacked
    # (kernel/events/uprobes.c: prepare_uretprobe() stops at MAX_URETPROBE_DEPTH), and they
    # return innermost first: rec(37) .. rec(100)
    assert [v for k, v in seen["live"] if k == 0] == list(range(100, -1, -1))
    assert [v for k, v in seen["live"] if k == 1] == list(range(37, 101))
