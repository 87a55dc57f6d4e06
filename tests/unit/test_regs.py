"""PtRegs layouts against the kernel's struct pt_regs, and the kernel's accessors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kuprobe.arch import ARCHES
from kuprobe.errors import KuprobeValueError
from kuprobe.regs import (
    PtRegs,
    instruction_pointer,
    regs_get_kernel_argument,
    regs_get_kernel_stack_nth,
    regs_return_value,
    signed,
    user_stack_pointer,
)

# The kernel's user-space view of struct pt_regs (arch/x86/include/uapi/asm/ptrace.h,
# arch/arm64/include/uapi/asm/ptrace.h: struct user_pt_regs), compiled by gcc for each arch and
# read back from its DWARF: the members' names and offsets come from the kernel's headers, not
# from kuprobe. The uapi names carry the register width (rip, eflags, xcs, orig_rax); the
# kernel's own pt_regs drops it (ip, flags, cs, orig_ax).
UAPI = {
    "x86_64": ("gcc", "struct pt_regs", "#include <asm/ptrace.h>\n"),
    # one uapi header serves both x86 arches (it tests __i386__): the multiarch copy
    "i386": (
        "gcc -m32 -isystem /usr/include/x86_64-linux-gnu",
        "struct pt_regs",
        "#include <asm/ptrace.h>\n",
    ),
    "arm64": ("aarch64-linux-gnu-gcc", "struct user_pt_regs", "#include <asm/ptrace.h>\n"),
}


def _kernel_name(uapi: str) -> str:
    """rip -> ip, eflags -> flags, xcs -> cs, orig_rax -> orig_ax; r8..r15 stay."""
    prefix, _, name = uapi.rpartition("_")
    if len(name) > 2 and name[0] in "rex" and not name[1].isdigit():
        name = name[1:]
    return f"{prefix}_{name}" if prefix else name


def _dwarf_members(tmp_path: Path, arch: str) -> list[tuple[str, int, int]]:
    """(name, offset, element count) of the uapi struct's members, from gcc's DWARF."""
    cc, struct_name, include = UAPI[arch]
    if shutil.which(cc.split()[0]) is None:
        pytest.fail(f"{cc} is missing: scripts/setup.sh installs it")
    src = tmp_path / f"{arch}.c"
    src.write_text(f"{include}{struct_name} kuprobe_probe_regs;\n")
    obj = tmp_path / f"{arch}.o"
    subprocess.run([*cc.split(), "-g", "-c", "-o", obj, src], check=True)
    from elftools.elf.elffile import ELFFile

    with open(obj, "rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        for cu in dwarf.iter_CUs():
            for die in cu.iter_DIEs():
                name = die.attributes.get("DW_AT_name")
                if die.tag != "DW_TAG_structure_type" or name is None:
                    continue
                if name.value.decode() != struct_name.split()[1]:
                    continue
                out = []
                for m in die.iter_children():
                    count = 1
                    t = m.get_DIE_from_attribute("DW_AT_type")
                    if t.tag == "DW_TAG_array_type":
                        sub = next(t.iter_children())
                        count = sub.attributes["DW_AT_upper_bound"].value + 1
                    out.append(
                        (
                            m.attributes["DW_AT_name"].value.decode(),
                            m.attributes["DW_AT_data_member_location"].value,
                            count,
                        )
                    )
                return out
    raise AssertionError(f"no {struct_name} in {obj}")


@pytest.mark.parametrize("arch", sorted(UAPI))
def test_layout_is_the_kernels(tmp_path: Path, arch: str) -> None:
    info = ARCHES[arch]
    expected: list[tuple[str, int]] = []
    for name, offset, count in _dwarf_members(tmp_path, arch):
        if count == 1:
            expected.append((_kernel_name(name), offset))
        else:  # arm64's regs[31]: x0..x30
            expected += [(f"x{i}", offset + i * info.word_bytes) for i in range(count)]
    ours = [(f, i * info.word_bytes) for i, f in enumerate(info.regs.fields)]
    assert ours == expected


def test_arm64_layout_and_regs_view() -> None:
    r = PtRegs.of("arm64")
    assert len(ARCHES["arm64"].regs.fields) == 34  # user_pt_regs: regs[31], sp, pc, pstate
    r.regs[30] = 0x1234
    r.regs[0] = 7
    r.pc = 0x400000
    assert r.x30 == 0x1234
    assert regs_return_value(r) == 7
    assert instruction_pointer(r) == 0x400000
    with pytest.raises(IndexError):
        r.regs[31]


def test_x86_64_accessors() -> None:
    names = ARCHES["x86_64"].regs.fields
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
    with pytest.raises(KuprobeValueError):
        PtRegs.of("x86_64", [0] * 3)
    with pytest.raises(KuprobeValueError, match="unknown arch 'mips'"):
        PtRegs.of("mips")
