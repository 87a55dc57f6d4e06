"""AArch64 instruction classes and the simulated instructions of arm64 kprobes and uprobes.

Encodings from arch/arm64/include/asm/insn.h (the ``__AARCH64_INSN_FUNCS(name, mask, value)``
table) and arch/arm64/lib/insn.c; the decision which instructions step out of line, which are
simulated and which are refused is arch/arm64/kernel/probes/decode-insn.c
(aarch64_insn_is_steppable(), arm_probe_decode_insn(), arm_kprobe_decode_insn(),
is_probed_address_atomic()); the simulations are arch/arm64/kernel/probes/simulate-insn.c.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# arch/arm64/include/asm/insn.h: (mask, value) per instruction class
INSN_CLASSES: dict[str, tuple[int, int]] = {
    "adr": (0x9F000000, 0x10000000),
    "adrp": (0x9F000000, 0x90000000),
    "prfm_lit": (0xFF000000, 0xD8000000),
    "b": (0xFC000000, 0x14000000),
    "bl": (0xFC000000, 0x94000000),
    "cbz": (0x7F000000, 0x34000000),
    "cbnz": (0x7F000000, 0x35000000),
    "tbz": (0x7F000000, 0x36000000),
    "tbnz": (0x7F000000, 0x37000000),
    "bcond": (0xFF000010, 0x54000000),
    "exception": (0xFF000000, 0xD4000000),  # svc, hvc, smc, brk, hlt, dcps*
    "brk": (0xFFE0001F, 0xD4200000),
    "hint": (0xFFFFF01F, 0xD503201F),
    "br": (0xFFFFFC1F, 0xD61F0000),
    "br_auth": (0xFEFFF800, 0xD61F0800),
    "blr": (0xFFFFFC1F, 0xD63F0000),
    "blr_auth": (0xFEFFF800, 0xD63F0800),
    "ret": (0xFFFFFC1F, 0xD65F0000),
    "ret_auth": (0xFFFFFBFF, 0xD65F0BFF),
    "eret": (0xFFFFFFFF, 0xD69F03E0),
    "eret_auth": (0xFFFFFBFF, 0xD69F0BFF),
    "mrs": (0xFFF00000, 0xD5300000),
    "msr_imm": (0xFFF8F01F, 0xD500401F),
    "msr_reg": (0xFFF00000, 0xD5100000),
    "ldr_lit": (0xBF000000, 0x18000000),
    "ldrsw_lit": (0xFF000000, 0x98000000),
    "exclusive": (0x3F800000, 0x08000000),
    "load_ex": (0x3F400000, 0x08400000),
    "store_ex": (0x3F400000, 0x08000000),
}
# arch/arm64/lib/insn.c: aarch64_insn_is_branch()
BRANCHES = ("b", "bl", "cbz", "cbnz", "tbz", "tbnz", "ret", "ret_auth", "br", "br_auth", "blr",
            "blr_auth", "bcond")  # fmt: skip
# arch/arm64/include/asm/insn.h: AARCH64_INSN_SPCLREG_DAIF (op0:op1:CRn:CRm:op2 of DAIF)
AARCH64_INSN_SPCLREG_DAIF = 0xDA11
# arch/arm64/lib/insn.c: aarch64_insn_is_steppable_hint(): the hints (CRm:op2 << 5) that may
# run out of line: NOP, XPACLRI, PACIA1716, PACIB1716, PACIAZ, PACIASP, PACIBZ, PACIBSP, BTI*
STEPPABLE_HINTS = frozenset({0x000, 0x0E0, 0x100, 0x140, 0x300, 0x320, 0x340, 0x360,
                             0x400, 0x440, 0x480, 0x4C0})  # fmt: skip
# arch/arm64/kernel/probes/decode-insn.h: how far back is_probed_address_atomic() looks
MAX_ATOMIC_CONTEXT_SIZE = 32

# enum probe_insn (arch/arm64/include/asm/probes.h)
INSN_REJECTED = "rejected"
INSN_GOOD_NO_SLOT = "good_no_slot"  # simulated
INSN_GOOD = "good"  # stepped out of line


def insn_is(name: str, insn: int) -> bool:
    mask, value = INSN_CLASSES[name]
    return insn & mask == value


def is_class_branch_sys(insn: int) -> bool:
    """aarch64_insn_is_class_branch_sys(): op0 101x, branches, exceptions and system."""
    return insn & 0x1C000000 == 0x14000000


def uses_literal(insn: int) -> bool:
    """aarch64_insn_uses_literal(): ldr/ldrsw (literal), adr/adrp, prfm (literal)."""
    return any(insn_is(n, insn) for n in ("ldr_lit", "ldrsw_lit", "adr", "adrp", "prfm_lit"))


def is_steppable(insn: int) -> bool:
    """decode-insn.c: aarch64_insn_is_steppable()."""
    if is_class_branch_sys(insn):
        if any(insn_is(n, insn) for n in (*BRANCHES, "msr_imm", "msr_reg", "exception",
                                           "eret", "eret_auth")):  # fmt: skip
            return False
        if insn_is("mrs", insn):  # only reading DAIF is refused
            return (insn & 0x1FFFE0) >> 5 != AARCH64_INSN_SPCLREG_DAIF
        if insn_is("hint", insn):
            return insn & 0xFE0 in STEPPABLE_HINTS
        return True
    return not (uses_literal(insn) or insn_is("exclusive", insn))


Simulate = Callable[[int, int, Any, Any], None]  # (opcode, addr, regs, mem)


def _sext(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _get_x(regs: Any, n: int) -> int:
    return 0 if n == 31 else int(getattr(regs, f"x{n}"))  # xzr reads as 0


def _set_x(regs: Any, n: int, value: int) -> None:
    if n < 31:  # writes to xzr vanish
        setattr(regs, f"x{n}", value & (1 << 64) - 1)


def _set_pc(regs: Any, value: int) -> None:
    regs.pc = value & (1 << 64) - 1


def check_cond(cond: int, pstate: int) -> bool:
    """arch/arm64/kernel/probes (arch/arm/probes/kprobes/checkers): aarch32_opcode_cond_checks
    on the NZCV bits of pstate."""
    n, z, c, v = (pstate >> 31) & 1, (pstate >> 30) & 1, (pstate >> 29) & 1, (pstate >> 28) & 1
    base = {
        0: z == 1, 1: c == 1, 2: n == 1, 3: v == 1,  # eq, cs, mi, vs
        4: c == 1 and z == 0, 5: n == v, 6: z == 0 and n == v,  # hi, ge, gt
        7: True,  # al (and nv)
    }[cond >> 1]  # fmt: skip
    return base if cond & 1 == 0 or cond == 0xF else not base


def simulate_adr_adrp(opcode: int, addr: int, regs: Any, mem: Any) -> None:
    imm = _sext(((opcode >> 3) & 0x1FFFFC) | ((opcode >> 29) & 0x3), 21)
    val = (imm << 12) + (addr & ~0xFFF) if opcode & 0x80000000 else imm + addr
    _set_x(regs, opcode & 0x1F, val)
    _set_pc(regs, int(regs.pc) + 4)


def simulate_b_bl(opcode: int, addr: int, regs: Any, mem: Any) -> None:
    disp = _sext((opcode & 0x3FFFFFF) << 2, 28)
    if opcode & (1 << 31):  # bl: the link register is x30
        _set_x(regs, 30, addr + 4)
    _set_pc(regs, addr + disp)


def simulate_b_cond(opcode: int, addr: int, regs: Any, mem: Any) -> None:
    disp = 4
    if check_cond(opcode & 0xF, int(regs.pstate)):
        disp = _sext(((opcode >> 5) & 0x7FFFF) << 2, 21)
    _set_pc(regs, addr + disp)


def simulate_br_blr_ret(opcode: int, addr: int, regs: Any, mem: Any) -> None:
    xn = (opcode >> 5) & 0x1F
    _set_pc(regs, _get_x(regs, xn))  # pc first, in case of "blr lr"
    if (opcode >> 21) & 0x3 == 1:  # blr
        _set_x(regs, 30, addr + 4)


def simulate_cbz_cbnz(opcode: int, addr: int, regs: Any, mem: Any) -> None:
    xn = opcode & 0x1F
    val = _get_x(regs, xn) if opcode & (1 << 31) else _get_x(regs, xn) & 0xFFFFFFFF
    taken = val != 0 if opcode & (1 << 24) else val == 0
    _set_pc(regs, addr + (_sext(((opcode >> 5) & 0x7FFFF) << 2, 21) if taken else 4))


def simulate_tbz_tbnz(opcode: int, addr: int, regs: Any, mem: Any) -> None:
    bit = ((opcode & (1 << 31)) >> 26) | ((opcode >> 19) & 0x1F)
    set_ = (_get_x(regs, opcode & 0x1F) >> bit) & 1
    taken = set_ == 1 if opcode & (1 << 24) else set_ == 0
    _set_pc(regs, addr + (_sext(((opcode >> 5) & 0x3FFF) << 2, 16) if taken else 4))


def simulate_ldr_literal(opcode: int, addr: int, regs: Any, mem: Any) -> None:
    load = addr + _sext(((opcode >> 5) & 0x7FFFF) << 2, 21)
    if opcode & (1 << 30):  # x0-x30
        _set_x(regs, opcode & 0x1F, int.from_bytes(mem.read(load, 8), "little"))
    else:  # w0-w30
        _set_x(regs, opcode & 0x1F, int.from_bytes(mem.read(load, 4), "little"))
    _set_pc(regs, int(regs.pc) + 4)


def simulate_ldrsw_literal(opcode: int, addr: int, regs: Any, mem: Any) -> None:
    load = addr + _sext(((opcode >> 5) & 0x7FFFF) << 2, 21)
    _set_x(regs, opcode & 0x1F, _sext(int.from_bytes(mem.read(load, 4), "little"), 32))
    _set_pc(regs, int(regs.pc) + 4)


def arm_probe_decode_insn(insn: int) -> tuple[str, Simulate | None]:
    """decode-insn.c: arm_probe_decode_insn(): stepped, simulated (with how) or refused."""
    if is_steppable(insn):
        return INSN_GOOD, None
    handler: Simulate
    if insn_is("bcond", insn):
        handler = simulate_b_cond
    elif insn_is("cbz", insn) or insn_is("cbnz", insn):
        handler = simulate_cbz_cbnz
    elif insn_is("tbz", insn) or insn_is("tbnz", insn):
        handler = simulate_tbz_tbnz
    elif insn_is("adr", insn) or insn_is("adrp", insn):
        handler = simulate_adr_adrp
    elif insn_is("b", insn) or insn_is("bl", insn):
        handler = simulate_b_bl
    elif insn_is("br", insn) or insn_is("blr", insn) or insn_is("ret", insn):
        handler = simulate_br_blr_ret
    else:  # cannot step out of line and not simulated (yet)
        return INSN_REJECTED, None
    return INSN_GOOD_NO_SLOT, handler


def is_probed_address_atomic(before: bytes) -> bool:
    """decode-insn.c: is_probed_address_atomic(): scanning back from the insn before the probe
    (``before`` ends there), an exclusive load before any exclusive store means the probe is
    inside an ldxr/stxr sequence."""
    words = [int.from_bytes(before[i : i + 4], "little") for i in range(0, len(before) - 3, 4)]
    for w in reversed(words[-MAX_ATOMIC_CONTEXT_SIZE:]):
        if insn_is("store_ex", w):
            return False
        if insn_is("load_ex", w):
            return True
    return False


def arm_kprobe_decode_insn(insn: int, before: bytes) -> tuple[str, Simulate | None]:
    """decode-insn.c: arm_kprobe_decode_insn(): kprobes also simulate ldr/ldrsw (literal) and
    refuse a probe inside an exclusive sequence (``before``: the function's bytes before it)."""
    decoded: tuple[str, Simulate | None]
    if insn_is("ldr_lit", insn):
        decoded = (INSN_GOOD_NO_SLOT, simulate_ldr_literal)
    elif insn_is("ldrsw_lit", insn):
        decoded = (INSN_GOOD_NO_SLOT, simulate_ldrsw_literal)
    else:
        decoded = arm_probe_decode_insn(insn)
    if decoded[0] != INSN_REJECTED and is_probed_address_atomic(before):
        return INSN_REJECTED, None
    return decoded
