"""The kernel matrix end to end, from the host: a minimal guest of a Debian kernel series
(`kuprobe vm run --kernel SERIES`) boots, and the test module built for that kernel's headers
(kuprobe/crosscheck/kmod_build.py) loads there and takes a kprobe.

Marked `vm`: it needs qemu (scripts/setup-vm.sh) and Debian's archive, and takes minutes the
first time (then its guests and headers are cached). Run it with
``pytest -m vm tests/cli/test_vm_kernel.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kuprobe.crosscheck import kmod_build
from kuprobe.targets.kmod import MODULE
from kuprobe.vm.boot import run_in_guest
from kuprobe.vm.image import cache_dir
from kuprobe.vm.minimal import ensure_minimal

pytestmark = [pytest.mark.vm, pytest.mark.slow]


# Only 5.10 for now: on 6.12's x86_64 config (IBT under retpolines) kk_jt's jump table
# (Kbuild: -fjump-tables) compiles to a `notrack` thunk, __x86_indirect_thunk_nt_rax, that no
# kernel exports, so modpost refuses the module; and objtool's whole-module pass cannot decode
# kk_insns. The module's sources must handle both before 6.12 joins (i386 and arm64 need
# their own asm in kk_funcs.c).
@pytest.mark.parametrize("series", ["5.10"])
def test_the_module_loads_in_the_minimal_guest(series: str, tmp_path: Path) -> None:
    ko = kmod_build.build(tmp_path / "kmod", kernel=series, arch="x86_64", force=True)
    image = ensure_minimal("x86_64", series, cache=cache_dir())
    script = (
        "uname -r; "
        f"insmod {ko} && grep -q '^{MODULE} ' /proc/modules && echo loaded; "
        "echo 'p:kk kk_add' >/sys/kernel/tracing/kprobe_events && echo kprobed; "
        f"grep -c 'kk_add.*{MODULE}' /sys/kernel/debug/kprobes/list; "
        "dmesg | grep -E 'WARNING|version magic|Unknown symbol|disagrees' || true"
    )
    result = run_in_guest(image, ["sh", "-c", script], shares=[tmp_path], timeout=600, echo=False)
    lines = result.output.splitlines()
    assert result.status == 0, result.output
    assert lines[:4] == [image.kernel_release, "loaded", "kprobed", "1"], result.output
    assert lines[4:] == [], f"the kernel complained at insmod:\n{result.output}"
