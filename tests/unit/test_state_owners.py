"""One owner per state: an object's private field is written only by the module that defines
it, through that module's verbs elsewhere (``kuprobe/probes.py``: ``inc_nmissed()``,
``set_owner()`` …, as kernel/kprobes.c keeps struct kprobe's behind kprobes_inc_nmissed_count();
``kuprobe/regs.py``: ``lazy_regs()``, ``model_regs()``, ``set_stack()``).

A module owns a private name (``_x``) when one of its classes declares it (an annotated or
assigned class attribute, a ``__slots__`` entry) or assigns ``self._x``. Any other write of
``something._x`` (assignment, augmented assignment, ``setattr``) outside that module fails.
Writes through ``self`` or ``cls`` are each class's own business and are not looked at.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "kuprobe"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def owned(tree: ast.Module) -> set[str]:
    """The private attribute names the module's classes declare or assign on ``self``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    for t in item.targets:
                        if isinstance(t, ast.Name) and t.id == "__slots__":
                            names.update(
                                e.value
                                for e in ast.walk(item.value)
                                if isinstance(e, ast.Constant) and isinstance(e.value, str)
                            )
                        elif isinstance(t, ast.Name):
                            names.add(t.id)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            names.add(node.attr)
    return {n for n in names if _private(n)}


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        found = list(node.targets)
    elif isinstance(node, ast.AugAssign | ast.AnnAssign):
        found = [node.target]
    else:
        return []
    flat: list[ast.expr] = []
    while found:
        t = found.pop()
        if isinstance(t, ast.Tuple | ast.List):
            found.extend(t.elts)
        else:
            flat.append(t)
    return flat


def foreign_writes(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, name) of each write of another object's private field not declared here."""
    mine = owned(tree)
    found = []
    for node in ast.walk(tree):
        written: list[tuple[ast.expr, str]] = [
            (t.value, t.attr) for t in _targets(node) if isinstance(t, ast.Attribute)
        ]
        if isinstance(node, ast.Call) and len(node.args) >= 2:
            func, arg = node.func, node.args[1]
            setter = (isinstance(func, ast.Name) and func.id == "setattr") or (
                isinstance(func, ast.Attribute) and func.attr == "__setattr__"
            )
            if setter and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                written.append((node.args[0], arg.value))
        for obj, name in written:
            if isinstance(obj, ast.Name) and obj.id in ("self", "cls"):
                continue
            if _private(name) and name not in mine:
                found.append((getattr(node, "lineno", 0), name))
    return found


def test_private_fields_are_written_by_their_owner_only() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: writes {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, name in foreign_writes(ast.parse(path.read_text(), str(path)))
    ]
    assert wrong == [], "use the owning module's verbs:\n" + "\n".join(wrong)


def test_the_check_sees_what_it_forbids() -> None:
    """The forms a backend used before the verbs: each is found; the owner's own are not."""
    outsider = ast.parse(
        "def f(p, regs):\n"
        "    p._hits += 1\n"
        "    p._inode, p._file_offset = (1, 2), 3\n"
        "    regs._raw = ()\n"
        "    setattr(p, '_owner', None)\n"
        "    object.__setattr__(p, '_lost', 0)\n"
        "    self._mine = 1\n"
    )
    assert sorted(name for _line, name in foreign_writes(outsider)) == [
        "_file_offset", "_hits", "_inode", "_lost", "_owner", "_raw",
    ]  # fmt: skip
    owner = ast.parse(
        "class Counted:\n"
        "    _hits: int = 0\n"
        "    __slots__ = ('_raw',)\n"
        "def inc_hits(p):\n"
        "    p._hits += 1\n"
        "def lazy(r):\n"
        "    r._raw = ()\n"
    )
    assert foreign_writes(owner) == []
