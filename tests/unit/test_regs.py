"""PtRegs layouts against the kernel's struct pt_regs, and the kernel's accessors."""

from __future__ import annotations

import pytest

from kuprobe.regs import (
    LAYOUTS,
    PtRegs,
    instruction_pointer,
    regs_get_kernel_argument,
    regs_get_kernel_stack_nth,
    regs_return_value,
    signed,
    user_stack_pointer,
)


def test_x86_64_layout_is_the_kernels() -> None:
    # arch/x86/include/asm/ptrace.h, CONFIG_X86_64: 21 longs, in this order
    assert LAYOUTS["x86_64"].fields == (
        "r15",
        "r14",
        "r13",
        "r12",
        "bp",
        "bx",
        "r11",
        "r10",
        "r9",
        "r8",
        "ax",
        "cx",
        "dx",
        "si",
        "di",
        "orig_ax",
        "ip",
        "cs",
        "flags",
        "sp",
        "ss",
    )


def test_i386_layout_is_the_kernels() -> None:
    # arch/x86/include/asm/ptrace.h, CONFIG_X86_32: 17 longs
    assert LAYOUTS["i386"].fields == (
        "bx",
        "cx",
        "dx",
        "si",
        "di",
        "bp",
        "ax",
        "ds",
        "es",
        "fs",
        "gs",
        "orig_ax",
        "ip",
        "cs",
        "flags",
        "sp",
        "ss",
    )


def test_arm64_layout_and_regs_view() -> None:
    r = PtRegs.of("arm64")
    assert len(LAYOUTS["arm64"].fields) == 34  # user_pt_regs: regs[31], sp, pc, pstate
    r.regs[30] = 0x1234
    r.regs[0] = 7
    r.pc = 0x400000
    assert r.x30 == 0x1234
    assert regs_return_value(r) == 7
    assert instruction_pointer(r) == 0x400000
    with pytest.raises(IndexError):
        r.regs[31]


def test_x86_64_accessors() -> None:
    names = LAYOUTS["x86_64"].fields
    r = PtRegs.of("x86_64", [100 + i for i in range(len(names))], stack=range(50, 66))
    assert [regs_get_kernel_argument(r, n) for n in range(6)] == [
        r.di,
        r.si,
        r.dx,
        r.cx,
        r.r8,
        r.r9,
    ]
    # arguments past the sixth come from the stack, after the return address (nth 0)
    assert regs_get_kernel_argument(r, 6) == regs_get_kernel_stack_nth(r, 1) == 51
    assert regs_get_kernel_stack_nth(r, 16) == 0  # past what was captured
    assert user_stack_pointer(r) == r.sp and instruction_pointer(r) == r.ip
    assert regs_return_value(r) == r.ax


def test_i386_accessors_regparm3_and_cdecl() -> None:
    r = PtRegs.of("i386", stack=[0xDEAD, 10, 20, 30] + [0] * 12)
    r.ax, r.dx, r.cx = 1, 2, 3
    assert [regs_get_kernel_argument(r, n) for n in range(3)] == [1, 2, 3]
    assert regs_get_kernel_argument(r, 3) == regs_get_kernel_stack_nth(r, 1) == 10
    # a user-space cdecl function's arguments: stack words 1, 2, ...
    assert [regs_get_kernel_stack_nth(r, n) for n in (1, 2, 3)] == [10, 20, 30]


def test_fields_are_masked_to_the_word() -> None:
    r = PtRegs.of("i386")
    r.ax = -1
    assert r.ax == 0xFFFFFFFF and signed(r.ax, 32) == -1
    q = PtRegs.of("x86_64")
    q.ax = -5
    assert signed(regs_return_value(q)) == -5


def test_wrong_field_count_and_unknown_arch() -> None:
    with pytest.raises(ValueError):
        PtRegs.of("x86_64", [0] * 3)
    with pytest.raises(ValueError):
        PtRegs.of("mips")
