"""Instruction boundaries through capstone: where a probe may go.

The kernel refuses a kprobe whose address is not an instruction boundary when decoded from
the function's start (kernel/kprobes.c: check_kprobe_address_safe() -> arch
can_probe() on x86 walks insns from the symbol start; -EILSEQ otherwise). kuprobe applies the
same rule to uprobes given as symbol+offset.
"""

from __future__ import annotations

from collections.abc import Iterator

import capstone

from kuprobe.arch import arch_info


def disassembler(arch: str) -> capstone.Cs:
    """A capstone decoder for ``arch`` (its mode from kuprobe.arch)."""
    cs_arch, cs_mode = arch_info(arch).capstone
    return capstone.Cs(getattr(capstone, cs_arch), getattr(capstone, cs_mode))


def boundaries(arch: str, code: bytes, address: int = 0) -> Iterator[tuple[int, int]]:
    """(offset from ``address``, length) of each instruction decoded from the start.

    Stops at the first byte capstone cannot decode.
    """
    cs = disassembler(arch)
    for insn_addr, size, _mn, _op in cs.disasm_lite(code, address):
        yield insn_addr - address, size


def is_boundary(arch: str, code: bytes, offset: int) -> bool:
    """Whether ``offset`` starts an instruction when ``code`` is decoded from its start."""
    if offset == 0:
        return True
    for off, _size in boundaries(arch, code):
        if off == offset:
            return True
        if off > offset:
            return False
    return False
