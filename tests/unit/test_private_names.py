"""A private name never crosses a package (STYLE.md): no module of kuprobe/ or benchmarks/
imports a module or an attribute whose name starts with ``_`` from outside the package (the
directory) that defines it, nor reaches one through a module it imported (``mod._name``),
nor names one in a string (a command line: ``python3 -m kuprobe.x._y``); nor does a script.

A private module (``vm/_initramfs.py``) is for the modules beside it; a private attribute of
a module (``task._state``) for that module and the modules beside it. What another package
needs becomes public or moves. Dunder names (``__future__``, ``__version__``) are not
private; a private name of a module outside this tree (``bcc._x``) is always foreign."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The scripts that run kuprobe's modules by name (``python3 -c 'from kuprobe… import …'``).
SCRIPTS = ("run", "scripts", "vagrant")

# Known crossings, each with its reason.
ALLOWED: dict[tuple[str, str], str] = {}

DOTTED = re.compile(r"\bkuprobe(?:\.\w+)+")


def sources() -> list[Path]:
    return sorted((ROOT / "kuprobe").rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))


def scripts() -> list[Path]:
    found: list[Path] = []
    for name in SCRIPTS:
        top = ROOT / name
        found += [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_file(dotted: str, importer: Path) -> Path | None:
    """The file of module ``dotted`` in this tree (a package's ``__init__.py``), or None."""
    parts = dotted.split(".")
    # kuprobe's modules by their package path; a benchmark's siblings as top-level modules
    for base in (ROOT, importer.parent):
        stem = base.joinpath(*parts)
        for f in (stem.with_suffix(".py"), stem / "__init__.py"):
            if f.is_file():
                return f
    return None


def absolute(node: ast.ImportFrom, importer: Path) -> str:
    """The module an ImportFrom names, a relative one resolved from the importer's package."""
    if not node.level:
        return node.module or ""
    package = importer.relative_to(ROOT).parent.parts
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def crossing(dotted: str, attr: str | None, importer: Path) -> str | None:
    """Why importing module ``dotted`` (or its attribute ``attr``) into ``importer`` crosses
    a package, or None when it does not."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if is_private(part):
            # a private module or package: its package is the directory holding it
            holder = ".".join(parts[:i])
            where = module_file(holder, importer) if holder else None
            if holder and where is None:
                return f"a private module of the foreign {holder}"
            if where is not None and where.parent != importer.parent:
                return f"a private module of {holder}"
            return None
    if attr is None or not is_private(attr):
        return None
    if module_file(f"{dotted}.{attr}", importer) is not None:
        return crossing(f"{dotted}.{attr}", None, importer)
    where = module_file(dotted, importer)
    if where is None:
        return f"a private name of the foreign {dotted}"
    if where.parent != importer.parent:
        return f"a private name of {dotted}"
    return None


def findings(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), str(path))
    here = path.relative_to(ROOT)
    bound: dict[str, str] = {}  # a local name -> the module it is bound to by an import
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                why = crossing(alias.name, None, path)
                if why:
                    yield f"{here}:{node.lineno}: import {alias.name} ({why})"
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            dotted = absolute(node, path)
            for alias in node.names:
                why = crossing(dotted, alias.name, path)
                if why:
                    yield f"{here}:{node.lineno}: from {dotted} import {alias.name} ({why})"
                submodule = f"{dotted}.{alias.name}"
                if module_file(submodule, path) is not None:
                    bound[alias.asname or alias.name] = submodule
    # a private attribute reached through an imported module: ``_bcc._prepare_env()``
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            chain: list[str] = [node.attr]
            value = node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in bound:
                dotted = ".".join([bound[value.id], *reversed(chain[1:])])
                why = crossing(dotted, node.attr, path)
                if why:
                    name = ".".join([value.id, *reversed(chain)])
                    yield f"{here}:{node.lineno}: {name} ({why})"


def named(text: str, where: Path) -> Iterator[tuple[str, str]]:
    """(dotted path, why it crosses) for each ``kuprobe.…`` path in ``text`` that names a
    private module or attribute from outside its package."""
    for m in DOTTED.finditer(text):
        why = crossing(m.group(0), None, where)
        if why:
            yield m.group(0), why


def strings(path: Path) -> Iterator[str]:
    here = path.relative_to(ROOT)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for dotted, why in named(node.value, path):
                yield f"{here}:{node.lineno}: the string {dotted!r} ({why})"


def script_findings(path: Path) -> Iterator[str]:
    here = path.relative_to(ROOT)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        for dotted, why in named(line, path):
            if (str(here), dotted) not in ALLOWED:
                yield f"{here}:{lineno}: {dotted} ({why})"


def test_the_walk_sees_the_tree() -> None:
    files = sources()
    assert ROOT / "kuprobe" / "task.py" in files
    assert ROOT / "benchmarks" / "bench_live.py" in files
    assert ROOT / "vagrant" / "provision.sh" in scripts()


def test_the_rule_reads_each_form() -> None:
    cli = ROOT / "kuprobe" / "cli" / "vm.py"
    vm = ROOT / "kuprobe" / "vm" / "boot.py"
    assert crossing("kuprobe.vm._x", "say", cli)  # a private module, from another package
    assert crossing("kuprobe.vm", "_x", cli)  # the same, as ``from kuprobe.vm import _x``
    assert crossing("kuprobe.task", "_x", cli)  # a private attribute
    assert crossing("kuprobe.vm._x", None, cli)  # ``import kuprobe.vm._x``
    assert crossing("bcc", "_x", cli)  # a foreign module's private name
    assert not crossing("kuprobe.vm._x", "say", vm)  # beside it: its own package
    assert not crossing("kuprobe.vm", "_x", vm)
    assert not crossing("kuprobe.task", "_x", ROOT / "kuprobe" / "uaccess.py")
    assert not crossing("__future__", "annotations", cli)
    assert not crossing("kuprobe", "__version__", cli)
    # in a string, or a script: the module path (and any attribute after it)
    said = "python3 -m kuprobe.vm._x; kuprobe.crosscheck.guest; kuprobe.task._x.y"
    assert [d for d, _why in named(said, cli)] == ["kuprobe.vm._x", "kuprobe.task._x.y"]
    assert [d for d, _why in named(said, ROOT / "vagrant" / "provision.sh")] == [
        "kuprobe.vm._x",
        "kuprobe.task._x.y",
    ]
    assert [d for d, _why in named(said, vm)] == ["kuprobe.task._x.y"]


def test_no_private_name_crosses_a_package() -> None:
    found = [f for path in sources() for f in [*findings(path), *strings(path)]]
    assert found == [], "\n".join(found)


def test_no_script_names_a_private_module() -> None:
    found = [f for path in scripts() for f in script_findings(path)]
    assert found == [], "\n".join(found)


def test_each_allowed_crossing_is_still_there() -> None:
    for script, dotted in ALLOWED:
        assert dotted in (ROOT / script).read_text(), f"{script}: {dotted} is gone: drop it"
