"""Issue 3, item 6: generic code never names an arch; arches are one explicit registry."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

import kuprobe.model
from kuprobe.model import ARCH_HOOKS
from kuprobe.model.arch.base import Arch

MODEL = Path(kuprobe.model.__file__).parent
ARCH_DIR = MODEL / "arch"
# Every module of the model package but the arch modules is generic; emu.py is left out by
# design: the shim maps Unicorn's per-arch constant modules; semantics.py too: the table of
# kernel differences, whose rows say which arches they apply to (data, read by the arches).
NOT_GENERIC = ("emu.py", "semantics.py")
GENERIC = sorted(
    p for p in MODEL.rglob("*.py") if ARCH_DIR not in p.parents and p.name not in NOT_GENERIC
)
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
    needs as hook arguments, as the kernel's arch_* hooks do. It may read the table of kernel
    differences (kuprobe.model.semantics: data, no state)."""
    tree = ast.parse(path.read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    bad = [m for m in imported if m.startswith("kuprobe.model.") and
           not m.startswith(("kuprobe.model.arch", "kuprobe.model.semantics"))]  # fmt: skip
    assert not bad, f"{path.name} imports {bad}"


def test_registry_is_explicit() -> None:
    assert set(ARCH_HOOKS) >= {"x86_64", "i386", "arm64"}
    for name, cls in ARCH_HOOKS.items():
        assert issubclass(cls, Arch)
        assert cls.name == name


# Outside the model: per-arch facts live in kuprobe/arch.py's records. The files below may
# still spell an arch's name, each for the reason given; any other module doing so fails.
PACKAGE = MODEL.parent
MAY_NAME_ARCHES = {
    "arch.py": "the records themselves",
    "model/arch": "the kernel's arch_* hooks, one module per arch",
    "model/semantics.py": "the table of kernel differences: each row names its arches",
    "vm": "the qemu guests and their Debian images (guests.py: one record per guest arch)",
    "cli/demo.py": "the demo's processes, a 64-bit and a 32-bit x86 one",
    "crosscheck/acceptance.py": "the x86 instruction-acceptance measurement (x86 by design)",
    "usdt.py": "a stapsdt note's operands, in each ISA's assembler syntax",
}
ARCH_NAMES = {"x86_64", "i386", "i686", "arm64", "aarch64", "amd64"}


def _allowed(path: Path) -> bool:
    rel = path.relative_to(PACKAGE).as_posix()
    return any(rel == k or rel.startswith(k + "/") for k in MAY_NAME_ARCHES)


def test_only_the_arch_records_name_an_arch_in_the_package() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if _allowed(path):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ARCH_NAMES:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
    assert not offenders, "\n".join(offenders)
