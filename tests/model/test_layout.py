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
    "regs.py": "arm64's pt_regs is also read as regs->regs[n] (arch/arm64/include/asm/ptrace.h)",
    "live/events.py": "the event record's pt_regs, decoded per arch as the BPF program wrote it",
    "live/hazards.py": "the uprobe optimisation it guards against is x86's (uprobes.c)",
    "model/emu.py": "Unicorn's constants are one module per arch (unicorn.x86_const …)",
    "crosscheck/spec.py": "a scenario's default arches (x86_64, i386) and the test module's",
    "crosscheck/runs.py": "which side runs which arch: the host's, the guests' (x86_64, arm64)",
    "crosscheck/_kprobes.py": "the kprobe scenarios run on the test module, in the x86_64 guest",
    "targets/kmod/__init__.py": "the test module is built for the x86_64 guest's kernel",
}
ARCH_NAMES = {"x86_64", "i386", "i686", "arm64", "aarch64", "amd64"}
# An identifier names an arch when one of its _-separated parts starts with one of these
# (X86_64, I386, ARM64, _decode_arm64, UC_ARCH_X86 …).
ARCH_NAME_PARTS = ("x86", "i386", "i686", "amd64", "arm64", "aarch64")


def arch_names_in(source: str) -> list[tuple[int, str]]:
    """(line, what) of each arch named in code: a string literal that is an arch's name, or an
    identifier spelling one (comments, docstrings and messages may cite arches)."""
    found = [
        (node.lineno, repr(node.value))
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and node.value in ARCH_NAMES
    ]
    for t in tokenize.generate_tokens(io.StringIO(source).readline):
        if t.type == tokenize.NAME and any(
            part.startswith(ARCH_NAME_PARTS) for part in t.string.lower().split("_")
        ):
            found.append((t.start[0], t.string))
    return sorted(found)


def _allowed(path: Path) -> bool:
    rel = path.relative_to(PACKAGE).as_posix()
    return any(rel == k or rel.startswith(k + "/") for k in MAY_NAME_ARCHES)


def test_only_the_arch_records_name_an_arch_in_the_package() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line}: {what}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if not _allowed(path)
        for line, what in arch_names_in(path.read_text())
    ]
    assert not offenders, "\n".join(offenders)


def test_the_arch_name_check_sees_names_and_literals() -> None:
    """Each way code names an arch is found: a literal, an arch record, a helper's name; a
    mention in a comment, a docstring or a message is not."""
    code = (
        "def f(arch):\n"
        '    """Runs on x86_64 hosts."""\n'
        '    if arch == "arm64":  # x86_64 too\n'
        "        return X86_64.name\n"
        '    print(f"no {arch} on i386")\n'
        "    return _decode_i386(arch)\n"
    )
    assert arch_names_in(code) == [(3, "'arm64'"), (4, "X86_64"), (6, "_decode_i386")]


@pytest.mark.parametrize("where", sorted(MAY_NAME_ARCHES))
def test_each_allowed_place_still_names_an_arch(where: str) -> None:
    """An entry whose files name no arch any more is stale: remove it."""
    root = PACKAGE / where
    files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
    assert any(arch_names_in(p.read_text()) for p in files), f"{where} names no arch"
