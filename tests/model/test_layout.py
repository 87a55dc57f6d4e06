"""Issue 3, item 6: generic code never names an arch; arches are one explicit registry."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

import pytest

import kuprobe.model
from kuprobe.model import ARCHES
from kuprobe.model.arch.base import Arch

MODEL = Path(kuprobe.model.__file__).parent
# emu.py is left out by design: the shim maps Unicorn's per-arch constant modules
GENERIC = [
    *sorted((MODEL / "core").glob("*.py")),
    *sorted(p for p in MODEL.glob("*.py") if p.name != "emu.py"),
]
ARCH_WORDS = ("x86", "i386", "amd64", "arm64", "aarch64", "rip", "eip", "eflags", "int3")


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: p.name)
def test_generic_code_names_no_arch(path: Path) -> None:
    """Comments and strings may cite kernel files; code (names) may not name an arch."""
    src = path.read_text()
    names = [
        t.string.lower()
        for t in tokenize.generate_tokens(io.StringIO(src).readline)
        if t.type == tokenize.NAME
    ]
    bad = sorted({n for n in names for part in n.split("_") if part.startswith(ARCH_WORDS)})
    assert not bad, f"{path.name} names {bad}"


def test_registry_is_explicit() -> None:
    assert set(ARCHES) >= {"x86_64", "i386"}
    for name, cls in ARCHES.items():
        assert issubclass(cls, Arch)
        assert cls.name == name
