"""No built-in exception leaves kuprobe: every ``raise`` in kuprobe/ raises a KuprobeError.

DESIGN.md: "Every exception kuprobe raises derives from KuprobeError". The AST of every module
is walked; a ``raise`` of a built-in exception by name (``raise ValueError(...)``,
``raise IndexError``), or a bare ``raise`` (or ``raise e``) in a handler that caught one by
name (``except OSError: ... raise``), is a finding. Where Python's own protocols want a
built-in, or where kuprobe catches its own built-in before it leaves, the place is listed
below with the reason. A ``raise`` of an exception object made elsewhere (``raise errors[0]``,
passing on what a worker thread raised) and ``assert`` (an invariant, not an error a caller
meets) are not judged here.
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass
from pathlib import Path

import kuprobe

PACKAGE = Path(kuprobe.__file__).resolve().parent

BUILTIN_EXCEPTIONS = frozenset(
    name
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, BaseException)
)

# A bare ``raise`` in a handler of these passes on whatever came (clean up, then propagate):
# it raises nothing of its own.
CATCH_ALL = frozenset({"BaseException", "Exception"})

_SYSCALL_OSERROR = (
    "the live backend's syscall wrappers (live/syscall.py, perf_event.py, perf_link.py, "
    "tracefs.py) raise OSError with the errno, as os.* do, and no caller lets it out: the "
    "register verbs (live/kprobe.py, live/uprobe.py: except OSError -> "
    "attach_error()) make it a ProbeError, the feature probes (bpf_map_works(), "
    "uprobe_multi_works(), ProbePool.uprobe_multi()) a False; remove_stale_events() leaves a "
    "busy event for the next start, teardown logs it"
)

# (module under kuprobe/, function's qualified name, exception) -> why it stays a built-in
ALLOWED: dict[tuple[str, str, str], str] = {
    ("model/core/common.py", "Trace.__getitem__", "IndexError"): (
        "the sequence protocol: Trace is a Sequence, and iter(), `in`, index() and a list's "
        "own behaviour end on IndexError"
    ),
    ("regs.py", "_RegsView.__getitem__", "IndexError"): (
        "the sequence protocol: regs.regs is arm64's regs[0..30] and iterates like a list"
    ),
    ("regs.py", "_RegsView.__setitem__", "IndexError"): (
        "the sequence protocol: regs.regs[31] = v fails as a list's would"
    ),
    ("model/__init__.py", "__getattr__", "AttributeError"): (
        "PEP 562: a module __getattr__ says 'no such name' with AttributeError (hasattr() and "
        "`from kuprobe.model import X` rely on it)"
    ),
    ("cli/_signals.py", "stop_requested.handler", "KeyboardInterrupt"): (
        "a second SIGINT/SIGTERM interrupts as Python's own SIGINT handler does; cli.main() "
        "turns it into exit status 130"
    ),
    ("cli/demo.py", "first_call_offset", "SystemExit"): (
        "the demo command exits with its message (only `kuprobe demo` calls it; the library "
        "never imports the command)"
    ),
    ("cli/demo.py", "run", "SystemExit"): "a command's run() exits with its message",
    ("live/syscall.py", "syscall", "OSError"): _SYSCALL_OSERROR,
    ("live/perf_event.py", "_format_bit", "OSError"): _SYSCALL_OSERROR,
    ("live/perf_event.py", "ioctl", "OSError"): _SYSCALL_OSERROR,
    ("live/perf_event.py", "_open_probe", "OSError"): _SYSCALL_OSERROR,
    ("live/perf_link.py", "link_perf_event", "OSError"): _SYSCALL_OSERROR
    + " (it closes its fds first)",
    ("live/tracefs.py", "_write_events", "OSError"): _SYSCALL_OSERROR,
    ("live/pool.py", "ProbePool._load", "OSError"): (
        "BCC's load failure as an OSError(EINVAL): ProbePool.uprobe_multi() catches it (no "
        "uprobe_multi links), the register verbs make it a ProbeError (attach_error())"
    ),
    ("live/pool.py", "ProbePool.mark_removed", "OSError"): (
        "the removal map is full (E2BIG): the uprobe dispatch (live/uprobe.py) catches it and "
        "filters the process in Python instead"
    ),
}

# Modules whose methods may be abstract stubs: a body of only (a docstring and)
# ``raise NotImplementedError``, which a subclass overrides. Any other NotImplementedError in
# them is a finding.
ABSTRACT_STUBS: dict[str, str] = {
    "model/arch/base.py": (
        "Arch: the hooks with no default (the kernel's arch_* hooks that have no __weak one, "
        "the model's call set-up); every arch in ARCH_HOOKS overrides each"
    ),
    "model/_signals.py": "SignalDelivery.record(): the Machine it is mixed into provides it",
    "crosscheck/sides.py": (
        "ProbeSet.offsets()/_probe(): Side (uprobes) and KSide (kprobes) provide them"
    ),
}


@dataclass(frozen=True)
class Finding:
    module: str
    line: int
    function: str
    exception: str
    how: str  # "raise", "bare re-raise", "re-raise by name"

    def key(self) -> tuple[str, str, str]:
        return (self.module, self.function, self.exception)

    def __str__(self) -> str:
        return f"kuprobe/{self.module}:{self.line} in {self.function}: {self.how} {self.exception}"


def _names(node: ast.expr | None) -> list[str]:
    """The exception names an ``except`` clause catches (dotted ones are not built-ins)."""
    if node is None:
        return ["BaseException"]  # a bare except
    elts = node.elts if isinstance(node, ast.Tuple) else [node]
    return [e.id for e in elts if isinstance(e, ast.Name)]


def _is_stub(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    if len(body) != 1 or not isinstance(body[0], ast.Raise) or body[0].exc is None:
        return False
    exc = body[0].exc
    target = exc.func if isinstance(exc, ast.Call) else exc
    return isinstance(target, ast.Name) and target.id == "NotImplementedError"


class _Walker(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module = module
        self.scope: list[str] = []
        self.handlers: list[ast.ExceptHandler] = []
        self.stubs_allowed = module in ABSTRACT_STUBS
        self.in_stub = False
        self.found: list[Finding] = []

    def _scoped(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        saved_handlers, self.handlers = self.handlers, []  # a new function: no handler yet
        saved_stub = self.in_stub
        if not isinstance(node, ast.ClassDef):
            self.in_stub = self.stubs_allowed and _is_stub(node)
        self.generic_visit(node)
        self.scope.pop()
        self.handlers = saved_handlers
        self.in_stub = saved_stub

    visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _scoped

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        self.handlers.append(node)
        self.generic_visit(node)
        self.handlers.pop()

    def _add(self, node: ast.Raise, exception: str, how: str) -> None:
        function = ".".join(self.scope) or "<module>"
        self.found.append(Finding(self.module, node.lineno, function, exception, how))

    def visit_Raise(self, node: ast.Raise) -> None:
        exc = node.exc
        if exc is None:  # bare raise: what the innermost handler caught
            caught = _names(self.handlers[-1].type) if self.handlers else []
            for name in caught:
                if name in BUILTIN_EXCEPTIONS and name not in CATCH_ALL:
                    self._add(node, name, "bare re-raise")
            return
        target = exc.func if isinstance(exc, ast.Call) else exc
        if isinstance(target, ast.Name):
            if target.id in BUILTIN_EXCEPTIONS:
                if not (self.in_stub and target.id == "NotImplementedError"):
                    self._add(node, target.id, "raise")
            else:  # ``except OSError as e: raise e``
                for h in reversed(self.handlers):
                    if h.name == target.id:
                        for name in _names(h.type):
                            if name in BUILTIN_EXCEPTIONS and name not in CATCH_ALL:
                                self._add(node, name, "re-raise by name")
                        break
        self.generic_visit(node)


def findings() -> list[Finding]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        walker = _Walker(module)
        walker.visit(ast.parse(path.read_text(), str(path)))
        out.extend(walker.found)
    return out


def test_no_builtin_exception_is_raised_outside_the_allow_list() -> None:
    bad = [str(f) for f in findings() if f.key() not in ALLOWED]
    assert not bad, "raise a KuprobeError (kuprobe/errors.py) instead:\n" + "\n".join(bad)


def test_every_allow_list_entry_is_still_needed_and_says_why() -> None:
    used = {f.key() for f in findings()}
    assert not set(ALLOWED) - used, f"stale entries: {sorted(set(ALLOWED) - used)}"
    assert all(reason.strip() for reason in ALLOWED.values())
    for module, reason in ABSTRACT_STUBS.items():
        assert (PACKAGE / module).is_file() and reason.strip(), module


def _walk(source: str) -> list[str]:
    walker = _Walker("example.py")
    walker.visit(ast.parse(source))
    return [f"{f.function}: {f.how} {f.exception}" for f in walker.found]


def test_the_walker_finds_each_form() -> None:
    source = '''
def plain():
    raise ValueError("bad")

def named():
    raise IndexError

def reraised():
    try:
        pass
    except (OSError, KeyError):
        cleanup()
        raise

def by_name():
    try:
        pass
    except TypeError as e:
        raise e

def passed_on():
    try:
        pass
    except BaseException:
        raise
    except Exception as e:
        raise e

def converted():
    try:
        pass
    except OSError as e:
        raise ProbeError(e.errno, "x") from e

class C:
    def stub(self):
        """Not a stub outside ABSTRACT_STUBS."""
        raise NotImplementedError
'''
    assert _walk(source) == [
        "plain: raise ValueError",
        "named: raise IndexError",
        "reraised: bare re-raise OSError",
        "reraised: bare re-raise KeyError",
        "by_name: re-raise by name TypeError",
        "C.stub: raise NotImplementedError",
    ]
