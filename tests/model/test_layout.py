"""Issue 3, item 6: generic code never names an arch; arches are one explicit registry."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

import kuprobe.model
from kuprobe.model import ARCHES
from kuprobe.model.arch.base import Arch

MODEL = Path(kuprobe.model.__file__).parent
ARCH_DIR = MODEL / "arch"
# Every module of the model package but the arch modules is generic; emu.py is left out by
# design: the shim maps Unicorn's per-arch constant modules.
GENERIC = sorted(p for p in MODEL.rglob("*.py") if ARCH_DIR not in p.parents and p.name != "emu.py")
ARCH_MODULES = sorted(ARCH_DIR.glob("*.py"))
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


@pytest.mark.parametrize("path", ARCH_MODULES, ids=lambda p: p.name)
def test_arch_code_reaches_generic_state_only_through_hooks(path: Path) -> None:
    """An arch module imports nothing of the generic cores or the Machine: it gets what it
    needs as hook arguments, as the kernel's arch_* hooks do."""
    tree = ast.parse(path.read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    bad = [m for m in imported if m.startswith("kuprobe.model.") and
           not m.startswith("kuprobe.model.arch")]  # fmt: skip
    assert not bad, f"{path.name} imports {bad}"


def test_registry_is_explicit() -> None:
    assert set(ARCHES) >= {"x86_64", "i386", "arm64"}
    for name, cls in ARCHES.items():
        assert issubclass(cls, Arch)
        assert cls.name == name
