"""Several kprobes in one function: what one may take does not change while others stay.

The kernel decodes a function through recover_probed_instruction() (arch/x86/kernel/kprobes/
core.c: can_probe() and __copy_instruction() read the original bytes back from under every
registered kprobe's int3, or an optimized probe's jump), so registering a kprobe never changes
where the next one may go. Here probes stay registered at every instruction start of real
kernel functions (the running kernel's own bytes, as test_model_agrees reads them), on the
live kernel and in the model alike, and every offset of the function is tried while they stay:
the model must give the kernel's answer (0 or its errno) everywhere. Left out, as in
test_model_agrees and for the same reason: the offsets whose instruction boundaries the boot
patching moved (a ``jmp __x86_return_thunk`` that runs as ``ret; int3 …``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kuprobe import Kprobe, register_kprobe, unregister_kprobe

from .test_model_agrees import model_of, register_errno, starts

pytestmark = [
    pytest.mark.vm,
    pytest.mark.arches("x86_64"),
    pytest.mark.usefixtures("no_leftovers"),
]

# Functions with calls, branches, %rip-relative loads and a mix of instruction lengths
# (kernel/sys.c, fs/open.c, fs/read_write.c, fs/file.c), none on an idle, RCU or MSR path.
FUNCTIONS = (
    "__x64_sys_getpgid",
    "do_sys_openat2",
    "__x64_sys_setpgid",
    "do_faccessat",
    "ksys_lseek",
    "do_dup2",
)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_probes_in_one_function_never_change_what_the_next_may_do(
    function: str,
    kernel_function_bytes: Callable[[str], tuple[int, bytes]],
    tmp_path: Path,
) -> None:
    machine, code, running, moved = model_of(function, kernel_function_bytes, tmp_path)
    disagree: dict[str, tuple[int, int]] = {}
    kept: list[tuple[Kprobe | None, Kprobe | None]] = []
    try:
        # every instruction start, one after the other; each stays where it registers
        for off in sorted(starts(code) & starts(running)):
            mk, lk = (Kprobe(symbol_name=function, offset=off) for _ in range(2))
            m_rc = register_errno(machine.register_kprobe, mk)
            l_rc = register_errno(register_kprobe, lk)
            kept.append((mk if m_rc == 0 else None, lk if l_rc == 0 else None))
            if m_rc != l_rc:
                disagree[f"keep +{off:#x}"] = (m_rc, l_rc)
        held = sum(lk is not None for _mk, lk in kept)
        assert held >= len(kept) // 2, f"{function}: the kernel took only {held} probes"
        # every offset, tried while all of them stay
        for off in range(len(code)):
            if off in moved:
                continue
            mk, lk = (Kprobe(symbol_name=function, offset=off) for _ in range(2))
            m_rc = register_errno(machine.register_kprobe, mk)
            l_rc = register_errno(register_kprobe, lk)
            if m_rc == 0:
                machine.unregister_kprobe(mk)
            if l_rc == 0:
                unregister_kprobe(lk)
            if m_rc != l_rc:
                disagree[f"try +{off:#x}"] = (m_rc, l_rc)
    finally:
        for mk_kept, lk_kept in kept:
            if mk_kept is not None:
                machine.unregister_kprobe(mk_kept)
            if lk_kept is not None:
                unregister_kprobe(lk_kept)
    assert not disagree, f"{function}: offset -> (model errno, live errno): {disagree}"
