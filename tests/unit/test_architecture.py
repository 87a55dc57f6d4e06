"""ARCHITECTURE.md is complete and true where a test can tell: it names every module, its table
of who imports each library is the code's, and every module's docstring opens with its job.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "kuprobe"
DOC = ROOT / "ARCHITECTURE.md"
MODULES = sorted(PACKAGE.rglob("*.py"))
SUMMARY_MAX = 97  # the summary line with its opening quotes fits ruff's 100 columns


def _prose() -> str:
    """The document without its drawing (a code block of box characters and names)."""
    return re.sub(r"```.*?```", "", DOC.read_text(), flags=re.S)


def named_in_doc() -> set[str]:
    """Everything the document writes in backticks (a span may wrap onto the next line)."""
    return {" ".join(t.split()) for t in re.findall(r"`([^`]+)`", _prose())}


def library_table() -> dict[str, set[str]]:
    """The "Who imports each library" table: library -> the modules it lists."""
    section = _prose().split("## Who imports each library", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] not in ("library", "---"):
            table[cells[0]] = set(re.findall(r"`([^`]+)`", cells[1]))
    return table


def third_party_imports(modules: list[Path], root: Path = PACKAGE) -> dict[str, set[str]]:
    """Library (top-level package) -> the modules (relative to ``root``) importing it, anywhere
    in their code."""
    local = {"kuprobe", "__future__"}
    found: dict[str, set[str]] = defaultdict(set)
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    found[top].add(path.relative_to(root).as_posix())
    return dict(found)


@pytest.mark.parametrize(
    "path",
    [p for p in MODULES if p.name not in ("__init__.py", "__main__.py")],
    ids=lambda p: p.relative_to(PACKAGE).as_posix(),
)
def test_the_document_names_every_module(path: Path) -> None:
    rel = path.relative_to(PACKAGE).as_posix()
    named = named_in_doc()
    # by its name, its path, or its path inside its room (`core/kprobes.py`)
    said = path.name in named or any(rel == t or rel.endswith("/" + t) for t in named)
    assert said, f"ARCHITECTURE.md does not name {rel}"


def test_the_library_table_is_the_code() -> None:
    assert library_table() == third_party_imports(MODULES)


def test_the_table_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    """A lazy import counts as much as one at the top (BCC and Unicorn are imported lazily)."""
    lazy = "import os\n\ndef f():\n    import unicorn.x86_const\n    from bcc import BPF\n"
    tmp_path.joinpath("lazy.py").write_text(lazy)
    tmp_path.joinpath("other.py").write_text("from kuprobe.arch import ARCHES\nimport rich\n")
    found = third_party_imports(sorted(tmp_path.glob("*.py")), tmp_path)
    assert found == {"unicorn": {"lazy.py"}, "bcc": {"lazy.py"}, "rich": {"other.py"}}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_every_module_opens_with_its_job(path: Path) -> None:
    """A module docstring whose first line is a whole sentence (PEP 257's summary line)."""
    doc = ast.get_docstring(ast.parse(path.read_text()), clean=False)
    assert doc, f"{path.relative_to(PACKAGE)} has no docstring"
    first = doc.splitlines()[0].rstrip()
    assert first.endswith((".", ":", "…")), f"its first line is not a sentence: {first!r}"
    assert len(first) <= SUMMARY_MAX, f"its first line runs on ({len(first)} characters)"
