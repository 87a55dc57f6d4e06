"""The test module's build for a kernel of the matrix (kuprobe/crosscheck/kmod_build.py): what
makes the host's tools fit a newer kernel's headers. No compiler run, no network."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kuprobe.crosscheck import kmod_build
from kuprobe.vm.kernels import Kernel


def test_kbuild_tools_needing_a_newer_glibc_are_found() -> None:
    elf = b"\x7fELF..GLIBC_2.2.5\x00GLIBC_2.38\x00GLIBC_2.34\x00"
    assert kmod_build.glibc_minor_needed(elf) == 38
    assert kmod_build.glibc_minor_needed(b"\x7fELF no versions") == 0


def kernel(arch: str) -> Kernel:
    abi = "6.12.1+deb13"
    return Kernel("6.12", "trixie", arch, "amd64", f"{abi}-amd64", "6.12.1-1",
                  f"linux-headers-{abi}-common", f"linux-kbuild-{abi}", "1:1.37")  # fmt: skip


@pytest.mark.parametrize(("has_flag", "has_pahole"), [(True, True), (False, False)])
def test_a_newer_gcc_s_choices_are_undone_only_where_the_host_lacks_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, has_flag: bool, has_pahole: bool
) -> None:
    (tmp_path / ".config").write_text(
        "CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT=y\nCONFIG_DEBUG_INFO_BTF_MODULES=y\n"
    )
    asked = []
    monkeypatch.setattr(kmod_build, "_cc_accepts", lambda cc, f: asked.append(cc) or has_flag)
    pahole = "/usr/bin/pahole" if has_pahole else None
    monkeypatch.setattr(shutil, "which", lambda name: pahole)
    got = kmod_build.compat_vars(tmp_path, kernel("x86_64"))
    if has_flag:
        assert got == []
    else:
        assert got == ["CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT=", "CONFIG_DEBUG_INFO_BTF_MODULES="]
    kmod_build.compat_vars(tmp_path, kernel("arm64"))
    assert asked == ["gcc", "aarch64-linux-gnu-gcc"]  # each arch's compiler is the one asked
