"""The model's prediction, checked on the live kernel offset by offset.

The model decodes a kernel function's real bytes (from the guest's vmlinux image, at the
function's real address) and says which offsets a kprobe may take and which it refuses
(EILSEQ: inside an instruction). The live kernel must agree at every offset, except where
the kernel patched its text at boot so that instruction boundaries moved: a
``jmp __x86_return_thunk`` in the file is ``ret; int3 x4`` in the running kernel when the CPU
needs no return thunk (arch/x86/kernel/alternative.c: apply_returns()). Those offsets are
found by decoding the running text (/proc/kcore) and left out, and must stay few.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kuprobe import Kprobe, ProbeError, register_kprobe, unregister_kprobe
from kuprobe.crosscheck._kmod import PAGE, ModuleImage
from kuprobe.elf import ElfImage
from kuprobe.insn import boundaries

if TYPE_CHECKING:
    from kuprobe.model import Machine

# x86_64 only: the boundaries here come from decoding x86's variable-length instructions (on
# arm64 every 4-byte-aligned offset is one, which test_kprobes checks there).
pytestmark = [
    pytest.mark.vm,
    pytest.mark.arches("x86_64"),
    pytest.mark.usefixtures("no_leftovers"),
]

# Small functions with a mix of instruction lengths (fs/open.c, kernel/sys.c).
FUNCTIONS = ("__x64_sys_getpgid", "do_sys_openat2")


def function_elf(path: Path, name: str, addr: int, code: bytes) -> None:
    """An ELF64 (x86-64) whose only text is `code` at `addr`, named `name`, the rest of its
    pages zero (kuprobe.crosscheck._kmod.write_elf, which the kprobe scenarios load too).

    The guest's vmlinux comes out of the bzImage stripped; this gives the model the
    function's bytes and its symbol, exactly as the image has them.
    """
    first = addr & ~(PAGE - 1)
    text = bytes(addr - first) + code
    text += bytes(-len(text) % PAGE)
    image = ModuleImage(symbols={name: (addr, len(code))})
    for off in range(0, len(text), PAGE):
        image.pages[first + off] = (text[off : off + PAGE], 5)  # PF_R | PF_X
    image.write_elf(path)


def starts(code: bytes) -> set[int]:
    return {off for off, _n in boundaries("x86_64", code)}


def register_errno(register: Callable[[Kprobe], None], kp: Kprobe) -> int:
    """0 if ``kp`` registers (it stays), else the ProbeError's errno."""
    try:
        register(kp)
    except ProbeError as e:
        return e.errno or -1
    return 0


def _accepts(register: Callable[[Kprobe], None], unregister: Callable[[Kprobe], None],
             kp: Kprobe) -> int:  # fmt: skip
    """0 if `kp` registers (then unregisters it), else the ProbeError's errno."""
    rc = register_errno(register, kp)
    if rc == 0:
        unregister(kp)
    return rc


def model_of(
    function: str, kernel_function_bytes: Callable[[str], tuple[int, bytes]], tmp_path: Path
) -> tuple[Machine, bytes, bytes, set[int]]:
    """A Machine of ``function``'s bytes at its address, with the running kernel's rules
    (kuprobe.model.semantics); its bytes in the image and as they run; and the instruction
    starts the boot-time patching moved (few, or the function is left out).

    The model is imported here, not at the top: this module is collected in every guest and
    the arm64 guest's Debian unicorn does not import (it needs distutils); the tests that call
    this are deselected there (x86_64 only)."""
    from kuprobe.model import Machine

    addr, code = kernel_function_bytes(function)
    running = ElfImage("/proc/kcore").read_vaddr(addr, len(code))
    moved = starts(code) ^ starts(running)
    assert len(moved) <= len(code) // 5, f"{function}: text patched beyond recognition"
    elf = tmp_path / f"{function}.elf"
    function_elf(elf, function, addr, code)
    machine = Machine.load(elf, space="kernel", trace=False, semantics=os.uname().release)
    return machine, code, running, moved


@pytest.mark.parametrize("function", FUNCTIONS)
def test_live_kernel_agrees_with_the_model_at_every_offset(
    function: str,
    kernel_function_bytes: Callable[[str], tuple[int, bytes]],
    tmp_path: Path,
) -> None:
    machine, code, _running, moved = model_of(function, kernel_function_bytes, tmp_path)
    predicted = {
        off: _accepts(machine.register_kprobe, machine.unregister_kprobe,
                      Kprobe(symbol_name=function, offset=off))
        for off in range(len(code))
    }  # fmt: skip
    assert set(predicted.values()) <= {0, errno.EILSEQ}, predicted
    assert 0 < sum(v == 0 for v in predicted.values()) < len(code)
    live = {
        off: _accepts(register_kprobe, unregister_kprobe, Kprobe(symbol_name=function, offset=off))
        for off in range(len(code))
    }
    disagree = {
        off: (predicted[off], live[off])
        for off in live
        if predicted[off] != live[off] and off not in moved
    }
    assert not disagree, f"{function}: offset -> (model errno, live errno): {disagree}"
