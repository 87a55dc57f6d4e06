"""ELF resolution on PIE, non-PIE and stripped files, checked against binutils' own view."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

from kuprobe.elf import ElfImage
from kuprobe.errors import ProbeError
from kuprobe.resolve import resolve_uprobe

ARCHES = ["x86_64", "i386"]


def _nm(path: Path) -> dict[str, int]:
    out = subprocess.run(["nm", "--defined-only", str(path)], capture_output=True, text=True)
    syms = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = int(parts[0], 16)
    return syms


def _objdump_offset(path: Path, sym: str) -> int:
    """File offset of ``sym`` as `objdump -F` prints it (binutils, independent of us)."""
    out = subprocess.run(
        ["objdump", "-F", f"--disassemble={sym}", str(path)], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        if f"<{sym}>" in line and "File Offset:" in line:
            return int(line.split("File Offset:")[1].strip(" ):"), 16)
    raise AssertionError(f"objdump does not show {sym}")


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("variant", ["target", "target-nopie", "target-static"])
def test_symbols_and_file_offsets_match_binutils(targets: Path, arch: str, variant: str) -> None:
    path = targets / arch / variant
    nm = _nm(path)
    with ElfImage(str(path)) as elf:
        assert elf.arch == arch
        assert elf.is_pie == (variant == "target")
        for name in ("add", "rec", "sw", "midpoint", "mid_label"):
            assert elf.symbols[name].value == nm[name], name
        for name in ("add", "sw", "calls"):
            vaddr = elf.symbols[name].value
            assert elf.vaddr_to_offset(vaddr) == _objdump_offset(path, name)
            assert elf.offset_to_vaddr(elf.vaddr_to_offset(vaddr)) == vaddr


@pytest.mark.parametrize("arch", ARCHES)
def test_stripped_file_keeps_no_local_symbols(targets: Path, arch: str) -> None:
    with ElfImage(str(targets / arch / "target-stripped")) as elf:
        assert "add" not in elf.symbols
        with pytest.raises(ProbeError) as e:
            elf.symbol("add")
        assert e.value.errno == errno.ENOENT
    # A file offset still works: the same code as the unstripped file.
    with ElfImage(str(targets / arch / "target")) as full:
        off = full.vaddr_to_offset(full.symbols["add"].value)
    t = resolve_uprobe(
        str(targets / arch / "target-stripped"),
        symbol_name=None,
        offset=off,
        runs=("x86_64", "i386"),
    )
    assert t.offset == off and t.arch == arch


def test_symbol_plus_offset_on_an_instruction_boundary(targets: Path) -> None:
    path = targets / "x86_64" / "target"
    with ElfImage(str(path)) as elf:
        mid = elf.symbols["mid_label"].value - elf.symbols["midpoint"].value
        want = elf.vaddr_to_offset(elf.symbols["mid_label"].value)
    t = resolve_uprobe(str(path), symbol_name="midpoint", offset=mid, runs=("x86_64", "i386"))
    assert t.offset == want


def test_usdt_free_file_has_no_notes(targets: Path) -> None:
    with ElfImage(str(targets / "x86_64" / "target")) as elf:
        assert elf.usdt_notes == ()


@pytest.mark.parametrize(
    ("path", "code"),
    [("/nonexistent/x", errno.ENOENT), ("/etc/os-release", errno.ENOEXEC), ("/etc", errno.EISDIR)],
)
def test_bad_files(path: str, code: int) -> None:
    with pytest.raises(ProbeError) as e:
        ElfImage(path)
    assert e.value.errno == code
