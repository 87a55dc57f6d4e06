"""One name per concept: no top-level class or public constant of kuprobe/ is defined in two
modules.

Two things under one name read as one: ``ARCHES`` once meant the arch records, the model's hook
classes, a scenario's default arches and the CLI's choices; ``X86_64`` both an arch record and
a hook class. The AST of every module is walked for the names it defines at the top level
(``class``, and assignments of a public name starting with a capital: constants and type
aliases); a name defined in two modules is a finding. Importing a name (a re-export) defines
nothing: one concept used in two places is one definition and an import. TypeVars are local
to the generics that use them and are not judged, nor are functions (a subcommand's
``add_parser``/``run`` and a script's ``main`` are one protocol, called through their module).
Where two modules legitimately define one name, it is listed below with the reason.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import kuprobe

PACKAGE = Path(kuprobe.__file__).resolve().parent

# name -> (the modules, or a package prefix ending in ".", that may each define it; the reason)
ALLOWED: dict[str, tuple[tuple[str, ...], str]] = {
    "EXAMPLES": (
        ("kuprobe.cli.",),
        "one protocol: each subcommand's (and cli/spec.py's probe-spec) examples for its "
        "--help epilog, read through its module",
    ),
    "PROJECT_ROOT": (
        ("kuprobe.targets.kmod", "kuprobe.vm.image"),
        "one concept (the checkout's root), found from each module's own place: neither "
        "package imports the other",
    ),
}

# Two definitions left for now, each with why; remove the entry when it is fixed.
PENDING: dict[str, tuple[tuple[str, ...], str]] = {}

TYPEVARS = frozenset({"TypeVar", "ParamSpec", "TypeVarTuple"})


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _judged(name: str) -> bool:
    return not name.startswith("_") and name[0].isupper()


def _is_typevar(value: ast.expr | None) -> bool:
    if not isinstance(value, ast.Call):
        return False
    f = value.func
    return (isinstance(f, ast.Name) and f.id in TYPEVARS) or (
        isinstance(f, ast.Attribute) and f.attr in TYPEVARS
    )


def top_level_names(body: list[ast.stmt]) -> Iterator[tuple[str, int]]:
    """The judged names ``body`` defines, with their lines (into ``if``/``try`` blocks)."""
    for node in body:
        if isinstance(node, ast.ClassDef):
            if _judged(node.name):
                yield node.name, node.lineno
        elif isinstance(node, ast.Assign) and not _is_typevar(node.value):
            for target in node.targets:
                if isinstance(target, ast.Name) and _judged(target.id):
                    yield target.id, node.lineno
        elif isinstance(node, ast.AnnAssign) and not _is_typevar(node.value):
            if isinstance(node.target, ast.Name) and _judged(node.target.id):
                yield node.target.id, node.lineno
        elif isinstance(node, ast.If):
            yield from top_level_names(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            handlers = [s for h in node.handlers for s in h.body]
            yield from top_level_names(node.body + handlers + node.orelse + node.finalbody)


def definitions() -> dict[str, dict[str, int]]:
    """name -> {module: line} for every judged name of kuprobe/."""
    found: dict[str, dict[str, int]] = defaultdict(dict)
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        for name, line in top_level_names(ast.parse(path.read_text(), str(path)).body):
            found[name].setdefault(module, line)
    return found


def _covers(where: tuple[str, ...], module: str) -> bool:
    return any(module == w or (w.endswith(".") and module.startswith(w)) for w in where)


def test_no_name_is_defined_in_two_modules() -> None:
    findings = []
    for name, modules in sorted(definitions().items()):
        if len(modules) < 2:
            continue
        listed = ALLOWED.get(name) or PENDING.get(name)
        if listed is not None and all(_covers(listed[0], m) for m in modules):
            continue
        findings.append(f"{name}: " + ", ".join(f"{m}:{line}" for m, line in modules.items()))
    assert not findings, (
        "one name, two definitions: give each concept its own name, or import the one "
        "definition (a reason in ALLOWED if both must stay):\n  " + "\n  ".join(findings)
    )


def test_every_listed_name_is_still_defined_twice() -> None:
    """An entry whose clash is gone (renamed, removed) goes from the lists."""
    defs = definitions()
    stale = [
        name
        for name, (where, _) in {**ALLOWED, **PENDING}.items()
        if len([m for m in defs.get(name, {}) if _covers(where, m)]) < 2
    ]
    assert not stale, f"no longer defined in two modules: {stale}"


def test_the_walk_sees_what_it_judges() -> None:
    """The walk finds the names it must (a class, a constant, a type alias) and skips the
    rest: a private name, a function, a TypeVar."""
    defs = definitions()
    assert "kuprobe.arch" in defs["ARCHES"] and "kuprobe.arch" in defs["ArchInfo"]
    assert list(defs["AnyProbe"]) == ["kuprobe.probes"]  # a type alias, imported elsewhere
    assert "P" not in defs and "log" not in defs and "main" not in defs
    assert not any(name.startswith("_") for name in defs)
