"""%rip-relative instructions stepped out of line, far from their data (x86_64).

A uprobe's XOL area may lie anywhere (the kernel puts it near the top of the address space),
more than 2 GiB from a PIE at ELF_ET_DYN_BASE: arch/x86/kernel/uprobes.c riprel_analyze()
rewrites "disp32(%rip)" as "disp32(%scratch)" (si, di or bx, one the insn does not use),
riprel_pre_xol() saves the scratch register and loads it with utask->vaddr + ilen (what
%rip would be), riprel_post_xol() restores it, after the step and on abort_xol. Kprobes keep
__copy_instruction()'s displacement rewrite: the kernel's insn slots are within 2 GiB of its
text.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from kuprobe import Kprobe, Uprobe, UprobeConsumer
from kuprobe.insn import disassembler
from kuprobe.model import ARCH_HOOKS, Machine, ProcessSignalled
from kuprobe.model.arch.x86_64 import riprel_rewrite
from kuprobe.model.core.uprobes import XolArea

from .bare import count_insns

TWO_GIB = 1 << 31
# The arches with %rip-relative addressing (i386 has none): these tests run on each of them.
RIPREL_ARCHES = [a for a in sorted(ARCH_HOOKS) if a == "x86_64"]
on_riprel_arches = pytest.mark.parametrize("arch", RIPREL_ARCHES)
# (function, argument): sw reads its jump table, table_sum its table and adds to a global
CASES = [("sw", 3), ("table_sum", 9)]


def riprel_insns(m: Machine, func: str) -> list[tuple[int, int, str]]:
    """(address, length, text) of the %rip-relative instructions of ``func``."""
    start = m.symbol_address(func)
    code = m.read(start, m.image.symbol(func).size)
    found = [(i.address, i.size, f"{i.mnemonic} {i.op_str}")
             for i in disassembler(m.arch).disasm(code, start) if "rip" in i.op_str]  # fmt: skip
    assert found, f"{func} has no %rip-relative instruction on {m.arch}"
    return found


def counter(m: Machine) -> int:
    """table_sum's ``counter += s`` goes to this global: a store through the scratch reg."""
    return int.from_bytes(m.read(m.symbol_address("counter"), 8), "little")


def fields(detail: str) -> dict[str, tuple[int, int]]:
    """The ``name old->new`` pairs of a pre_xol/post_xol/abort_xol trace event."""
    words = detail.split(":")[-1].split()
    out = {}
    for name, change in zip(words[::2], words[1::2], strict=True):
        old, new = change.split("->")
        out[name] = (int(old, 16), int(new, 16))
    return out


@on_riprel_arches
@pytest.mark.parametrize(("func", "arg"), CASES)
def test_uprobe_on_riprel_insn_of_a_pie_far_from_the_xol_area(
    targets: Path, arch: str, func: str, arg: int
) -> None:
    """riprel_pre_xol()/riprel_post_xol(): the result and the global are as unprobed, the
    hits exact, and the trace shows the scratch register loaded then restored."""
    path = str(targets / arch / "target")  # the PIE, at ELF_ET_DYN_BASE
    plain = Machine.load(path, trace=False)
    expected = plain.call(func, arg)
    want_counter = counter(plain)
    _, executed = count_insns(path, arch, func, arg)
    u = Machine.load(path)
    assert u.load_bias == u.hooks.ELF_ET_DYN_BASE
    for addr, size, text in riprel_insns(u, func):
        up = Uprobe(path, offset=u.image.vaddr_to_offset(addr - u.load_bias),
                    consumer=UprobeConsumer())  # fmt: skip
        u.register_uprobe(up)
        u.trace.clear()
        before = counter(u)
        try:
            assert u.call(func, arg) == expected, text
        finally:
            u.unregister_uprobe(up)
        assert up.hits == executed[addr - u.load_bias], text
        assert counter(u) - before == want_counter, text  # a store lands where it should
        if not up.hits:
            continue
        assert u.uprobes is not None
        xol = u.uprobes.xol
        assert isinstance(xol, XolArea) and abs(xol.vaddr - addr) > TWO_GIB, text
        pre = next(e for e in u.trace if e.kind == "pre_xol")
        post = next(e for e in u.trace if e.kind == "post_xol")
        (scratch,) = set(fields(pre.detail)) & {"si", "di", "bx"}
        saved, loaded = fields(pre.detail)[scratch]
        assert loaded == addr + size, f"{text}: {pre}"  # utask->vaddr + defparam.ilen
        assert fields(post.detail)[scratch] == (loaded, saved), f"{text}: {post}"
        assert fields(post.detail)["ip"][1] == addr + size, text
        # the slot holds "disp32(%scratch)" of the same length, not "disp32(%rip)"
        slot = next(b for b in xol.contents.values() if len(b) == size)
        (insn,) = disassembler(arch).disasm(slot, 0)
        assert "rip" not in insn.op_str and f"r{scratch}" in insn.op_str, insn.op_str


@on_riprel_arches
def test_scratch_register_restored_on_abort_xol(targets: Path, arch: str) -> None:
    """A fatal signal during the step: arch_uprobe_abort_xol() restores the scratch register
    too (riprel_post_xol() from the abort op) before ip goes back to the probe."""
    path = str(targets / arch / "target")
    u = Machine.load(path)
    addr, _size, text = riprel_insns(u, "table_sum")[0]  # lea table(%rip), %rsi: di scratch
    kill = UprobeConsumer(handler=lambda uc, r: u.kill(signal.SIGKILL) or 0)
    up = Uprobe(path, offset=u.image.vaddr_to_offset(addr - u.load_bias), consumer=kill)
    u.register_uprobe(up)
    try:
        with pytest.raises(ProcessSignalled):
            u.call("table_sum", 9)
    finally:
        u.unregister_uprobe(up)
    pre = next(e for e in u.trace if e.kind == "pre_xol")
    abort = next(e for e in u.trace if e.kind == "abort_xol")
    (scratch,) = set(fields(pre.detail)) & {"si", "di", "bx"}
    saved, loaded = fields(pre.detail)[scratch]
    assert fields(abort.detail)[scratch] == (loaded, saved), f"{text}: {abort}"
    assert fields(abort.detail)["ip"][1] == addr


@on_riprel_arches
@pytest.mark.parametrize(("func", "arg"), CASES)
def test_kprobe_keeps_displacement_rewrite(targets: Path, arch: str, func: str, arg: int) -> None:
    """__copy_instruction(): the slot's displacement is moved; the insn pages are within
    2 GiB of the text even for a relocated image (alloc_insn_page(): module space)."""
    path = str(targets / arch / "target")
    plain = Machine.load(path, space="kernel", trace=False)
    expected = plain.call(func, arg)
    want_counter = counter(plain)
    _, executed = count_insns(path, arch, func, arg)
    k = Machine.load(path, space="kernel")
    for addr, size, text in riprel_insns(k, func):
        kp = Kprobe(addr=addr)
        k.register_kprobe(kp)
        assert k.kprobes is not None
        slot = k.kprobes.points[addr].slot
        before = counter(k)
        try:
            assert k.call(func, arg) == expected, text
            slot_bytes = k.read(slot, size)
        finally:
            k.unregister_kprobe(kp)
        assert kp.hits == executed[addr - k.load_bias], text
        assert abs(slot - addr) < TWO_GIB, text
        assert counter(k) - before == want_counter, text
        orig = k.read(addr, size)
        cs = disassembler(arch)
        cs.detail = True
        (insn,) = cs.disasm(slot_bytes, slot)
        # still %rip-relative: only the displacement moved
        assert "rip" in insn.op_str and slot_bytes != orig, insn.op_str
        assert slot_bytes[: insn.disp_offset] == orig[: insn.disp_offset], text


def test_riprel_rewrite_picks_the_kernels_scratch_register() -> None:
    """riprel_analyze(): modrm "00 reg 101" -> "10 reg scratch"; si unless reg or vex.vvvv
    is si, then di, else bx; REX.B cleared; VEX3.B/EVEX.X set."""
    d = b"\x11\x22\x33\x44"
    # (insn bytes, offset of disp32, slot bytes, scratch)
    cases = [
        (b"\x48\x8d\x05" + d, 3, b"\x48\x8d\x86" + d, "si"),  # lea disp(%rip),%rax
        (b"\x48\x8d\x35" + d, 3, b"\x48\x8d\xb7" + d, "di"),  # lea disp(%rip),%rsi
        (b"\x48\x8b\x3d" + d, 3, b"\x48\x8b\xbe" + d, "si"),  # mov disp(%rip),%rdi
        (b"\x49\x8b\x05" + d, 3, b"\x48\x8b\x86" + d, "si"),  # REX.B: no effect, cleared
        (b"\x4c\x8d\x35" + d, 3, b"\x4c\x8d\xb7" + d, "di"),  # lea disp(%rip),%r14 (reg 6)
        (b"\x48\x01\x15" + d, 3, b"\x48\x01\x96" + d, "si"),  # add %rdx,disp(%rip)
        (b"\xc7\x05" + d + b"\x01\0\0\0", 2, b"\xc7\x86" + d + b"\x01\0\0\0", "si"),  # imm
        # vex3 mulx disp(%rip),%ebx,%ecx (the kernel's example): vvvv=bx, reg=cx -> si
        (b"\xc4\xe2\x63\xf6\x0d" + d, 5, b"\xc4\xe2\x63\xf6\x8e" + d, "si"),
        # vex3 with vvvv=si and reg=di: neither si nor di -> bx; VEX3.B set
        (b"\xc4\x82\x4b\xf6\x3d" + d, 5, b"\xc4\xe2\x4b\xf6\xbb" + d, "bx"),
        # vex2 vmovdqa disp(%rip),%xmm6 (reg 6, vvvv unused=1111 -> ax) -> di
        (b"\xc5\xf9\x6f\x35" + d, 4, b"\xc5\xf9\x6f\xb7" + d, "di"),
    ]
    names = {0x08: "si", 0x10: "di", 0x20: "bx"}
    for insn, disp_off, slot, scratch in cases:
        got, fix = riprel_rewrite(insn, disp_off)
        assert (got.hex(), names[fix]) == (slot.hex(), scratch), insn.hex()
