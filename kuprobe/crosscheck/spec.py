"""A scenario as data: one TOML file naming the program, the probes and the calls.

It is read with ``tomllib``; tests/scenarios/README.md gives every key.

```toml
description = "add(a, b): both arguments at entry (the arch's user ABI) and the return value"
program = "scenarios"              # kuprobe/targets/<program>.c (default "scenarios")
arches = ["x86_64", "i386"]        # default: both
compare = ["results", "hits", "events"]   # the default; also "events-by-probe"

[[probe]]
symbol = "add"                     # the function; where in it: offset = N, at = "a_label",
args = 2                           # insn = "call" (its first call; nth = 1 the second), or
ret = true                         # every_insn = true (a count-only probe on each instruction)

[[call]]
func = "add"
each = [[-2, -4], [0, 0], [3, 6]]  # or args = [1, 2] (repeat = N), or range = [lo, hi]
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuprobe.arch import ARCHES, I386, X86_64
from kuprobe.errors import KuprobeError

PROBE_KEYS = frozenset({
    "name", "symbol", "offset", "at", "insn", "nth", "every_insn", "args", "registers", "ret",
    "pid", "filter", "consumers", "kind", "maxactive", "data_size", "one_at_a_time",
})  # fmt: skip
CALL_KEYS = frozenset({"func", "args", "each", "range", "repeat", "disable", "enable"})
# A probe's kind: a uprobe (+ uretprobe with ret) in a process of this host, or a kprobe /
# kretprobe on the test module's functions (kuprobe/targets/kmod) in a kernel with kprobes.
KINDS = ("uprobe", "kprobe", "kretprobe")
KERNEL_KINDS = frozenset({"kprobe", "kretprobe"})
# What a kprobe scenario runs: the test module, in the x86_64 guest (the host has no kprobes).
KMOD_PROGRAM = "kuprobe_kmod"
KMOD_ARCHES: tuple[str, ...] = (X86_64.name,)
# What each side of the cross-check needs: "" (this host's uprobes) or "kprobes".
NEEDS_KPROBES = "kprobes"
TOP_KEYS = frozenset({"description", "program", "arches", "compare", "probe", "call"})
# "events": every handler call of every probe, in one order; "events-by-probe": each probe's
# own calls in order (for consumers sharing an offset, whose relative order is not compared)
FACTS = ("results", "hits", "events", "events-by-probe")
DEFAULT_FACTS = ("results", "hits", "events")
# A scenario's arches when it names none: the x86 pair its programs were written for (and that
# this x86_64 host's live uprobes run). It may name any arch kuprobe knows.
DEFAULT_ARCHES: tuple[str, ...] = (X86_64.name, I386.name)


class ScenarioError(KuprobeError, ValueError):
    """A scenario file that does not say what it must, or says something unknown."""


@dataclass(frozen=True)
class ScenarioProbe:
    """One ``[[probe]]`` of a scenario: where it goes and what its handlers record (not
    kuprobe.cli.spec.ProbeSpec, a probe given on the command line)."""

    name: str
    symbol: str
    offset: int = 0
    at: str | None = None  # a label (symbol) inside ``symbol``: the probe goes there
    insn: str | None = None  # the ``nth`` instruction of ``symbol`` with this mnemonic
    nth: int = 0
    every_insn: bool = False  # one count-only probe on each instruction of ``symbol``
    args: int = 0  # entry arguments to record, per the user ABI
    registers: tuple[str, ...] = ()  # pt_regs fields to record
    ret: bool = False  # a uretprobe too: record each return value
    pid: str = "target"  # "target": the driven process; "other": another process
    filter: str | None = None  # the consumer's filter: "accept" or "reject" every task
    consumers: int = 1  # this many probes (consumers) of this description on one offset
    kind: str = "uprobe"  # "kprobe" / "kretprobe": on the test module's function
    maxactive: int = 0  # a kretprobe's instances (0: the kernel's default)
    data_size: int = 0  # a kretprobe's per-call data: its entry_handler keeps argument 0 there
    one_at_a_time: bool = False  # every_insn: each probe alone, the calls made once per probe

    @property
    def records(self) -> bool:
        return bool(self.args or self.registers or self.ret or self.data_size)

    @property
    def kernel(self) -> bool:
        return self.kind in KERNEL_KINDS


@dataclass(frozen=True)
class CallSpec:
    """One call the driver makes: ``func(*args)``; or (kprobe scenarios) ``action`` "disable" /
    "enable": disable_kprobe() / enable_kprobe() of the probes named ``func``."""

    func: str
    args: tuple[int, ...]
    action: str = ""

    @property
    def label(self) -> str:
        if self.action:
            return f"{self.action}_kprobe({self.func})"
        return f"{self.func}({', '.join(map(str, self.args))})"

    @property
    def argv(self) -> str:
        """The program's command-line form: ``func:a:b``."""
        return ":".join([self.func, *map(str, self.args)])


@dataclass(frozen=True)
class ScenarioSpec:
    name: str
    description: str
    program: str
    arches: tuple[str, ...]
    compare: tuple[str, ...]
    probes: tuple[ScenarioProbe, ...]
    calls: tuple[CallSpec, ...]
    path: Path | None = None
    needs: str = ""  # NEEDS_KPROBES: its probes are kprobes (the x86_64 guest runs it)

    @property
    def side(self) -> str:
        """Where its live side runs: "host" (this host's uprobes) or "vm" (a guest's kprobes)."""
        return "vm" if self.needs == NEEDS_KPROBES else "host"


def _check_keys(where: str, table: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ScenarioError(f"{where}: unknown key {unknown[0]!r} (known: {sorted(allowed)})")


def _int(where: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ScenarioError(f"{where}: expected an integer, got {v!r}")
    return v


def _ints(where: str, v: Any) -> tuple[int, ...]:
    if not isinstance(v, list):
        raise ScenarioError(f"{where}: expected a list of integers, got {v!r}")
    return tuple(_int(where, x) for x in v)


def _probe(where: str, t: dict[str, Any]) -> ScenarioProbe:
    _check_keys(where, t, PROBE_KEYS)
    if not isinstance(t.get("symbol"), str):
        raise ScenarioError(f"{where}: 'symbol' (the probed function) is required")
    symbol = t["symbol"]
    places = [k for k in ("offset", "at", "insn", "every_insn") if k in t]
    if len(places) > 1:
        raise ScenarioError(f"{where}: give one of offset, at, insn, every_insn, not {places}")
    if t.get("pid", "target") not in ("target", "other"):
        raise ScenarioError(f"{where}: pid is 'target' or 'other', not {t['pid']!r}")
    kind = t.get("kind", "uprobe")
    if kind not in KINDS:
        raise ScenarioError(f"{where}: kind is one of {list(KINDS)}, not {kind!r}")
    if kind in KERNEL_KINDS:
        user_only = sorted({"pid", "filter"} & set(t))
        if user_only:
            raise ScenarioError(f"{where}: {user_only[0]!r} is for uprobes, not a {kind}")
    else:
        kernel_only = sorted({"maxactive", "data_size", "one_at_a_time"} & set(t))
        if kernel_only:
            raise ScenarioError(f"{where}: {kernel_only[0]!r} is for kprobe kinds, not a {kind}")
    if t.get("filter") not in (None, "accept", "reject"):
        raise ScenarioError(f"{where}: filter is 'accept' or 'reject', not {t['filter']!r}")
    regs = t.get("registers", [])
    if not isinstance(regs, list) or not all(isinstance(r, str) for r in regs):
        raise ScenarioError(f"{where}: registers is a list of pt_regs field names")
    offset = _int(where, t.get("offset", 0))
    default = t.get("at") or t.get("insn") or (f"{symbol}+{offset:#x}" if offset else symbol)
    spec = ScenarioProbe(
        name=str(t.get("name", default)),
        symbol=symbol,
        offset=offset,
        at=t.get("at"),
        insn=t.get("insn"),
        nth=_int(where, t.get("nth", 0)),
        every_insn=bool(t.get("every_insn", False)),
        args=_int(where, t.get("args", 0)),
        registers=tuple(regs),
        ret=bool(t.get("ret", False)),
        pid=t.get("pid", "target"),
        filter=t.get("filter"),
        consumers=_int(where, t.get("consumers", 1)),
        kind=kind,
        maxactive=_int(where, t.get("maxactive", 0)),
        data_size=_int(where, t.get("data_size", 0)),
        one_at_a_time=bool(t.get("one_at_a_time", False)),
    )
    if spec.one_at_a_time and not spec.every_insn:
        raise ScenarioError(f"{where}: one_at_a_time goes with every_insn")
    if kind == "kprobe" and (spec.ret or spec.maxactive or spec.data_size):
        raise ScenarioError(f"{where}: a kprobe records args and registers (ret: a kretprobe)")
    if kind == "kretprobe" and (spec.registers or spec.every_insn or spec.offset):
        raise ScenarioError(f"{where}: a kretprobe goes on a function's entry and records its "
                            "arguments (entry_handler) and return value")  # fmt: skip
    if spec.data_size and spec.data_size < 8:
        raise ScenarioError(f"{where}: data_size holds argument 0: at least 8 bytes")
    if spec.every_insn and spec.records:
        raise ScenarioError(f"{where}: every_insn probes count hits only (no args/registers/ret)")
    if spec.consumers < 1:
        raise ScenarioError(f"{where}: consumers must be at least 1")
    return spec


def _calls(where: str, t: dict[str, Any]) -> list[CallSpec]:
    _check_keys(where, t, CALL_KEYS)
    actions = [k for k in ("disable", "enable") if k in t]
    if actions:
        if len(t) != 1 or not isinstance(t[actions[0]], str):
            raise ScenarioError(f'{where}: {actions[0]} = "PROBE NAME" stands alone')
        return [CallSpec(t[actions[0]], (), actions[0])]
    func = t.get("func")
    if not isinstance(func, str):
        raise ScenarioError(f"{where}: 'func' (the function to call) is required")
    forms = [k for k in ("args", "each", "range") if k in t]
    if len(forms) != 1:
        raise ScenarioError(f"{where}: give exactly one of args, each, range")
    arglists: list[tuple[int, ...]]
    if "range" in t:
        lo, hi = _ints(where, t["range"])
        arglists = [(a,) for a in range(lo, hi + 1)]
    elif "each" in t:
        if not isinstance(t["each"], list):
            raise ScenarioError(f"{where}: each is a list of argument lists")
        arglists = [_ints(where, a) for a in t["each"]]
    else:
        arglists = [_ints(where, t["args"])] * _int(where, t.get("repeat", 1))
    return [CallSpec(func, a) for a in arglists]


def parse(name: str, data: dict[str, Any], path: Path | None = None) -> ScenarioSpec:
    """A scenario from its TOML tables; ``ScenarioError`` naming what is wrong."""
    where = str(path or name)
    _check_keys(where, data, TOP_KEYS)
    if not isinstance(data.get("description"), str):
        raise ScenarioError(f"{where}: 'description' is required")
    arches = tuple(data.get("arches", DEFAULT_ARCHES))
    if not arches or any(a not in ARCHES for a in arches):
        raise ScenarioError(f"{where}: arches are some of {list(ARCHES)}, not {list(arches)}")
    compare = tuple(data.get("compare", DEFAULT_FACTS))
    if not compare or any(c not in FACTS for c in compare):
        raise ScenarioError(f"{where}: compare is some of {list(FACTS)}, not {list(compare)}")
    probes = [_probe(f"{where}: probe {i + 1}", t) for i, t in enumerate(data.get("probe", []))]
    calls = [
        c for i, t in enumerate(data.get("call", [])) for c in _calls(f"{where}: call {i + 1}", t)
    ]
    if not probes or not calls:
        raise ScenarioError(f"{where}: a scenario needs at least one [[probe]] and one [[call]]")
    names = [p.name for p in probes]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ScenarioError(f"{where}: two probes named {dup!r}: give one a 'name'")
    kernel = {p.kernel for p in probes}
    if len(kernel) > 1:
        raise ScenarioError(f"{where}: uprobes and kprobes do not mix in one scenario")
    needs = NEEDS_KPROBES if kernel == {True} else ""
    for c in calls:
        if c.action and (not needs or c.func not in names):
            raise ScenarioError(f"{where}: {c.label}: names no kprobe of this scenario")
    if needs:
        arches = tuple(data.get("arches", KMOD_ARCHES))
        if arches != KMOD_ARCHES or data.get("program", KMOD_PROGRAM) != KMOD_PROGRAM:
            raise ScenarioError(
                f"{where}: kprobe scenarios run the test module ({KMOD_PROGRAM}) on "
                f"{list(KMOD_ARCHES)}"
            )
    return ScenarioSpec(
        name=name,
        description=data["description"].strip(),
        program=str(data.get("program", KMOD_PROGRAM if needs else "scenarios")),
        arches=arches,
        compare=compare,
        probes=tuple(probes),
        calls=tuple(calls),
        path=path,
        needs=needs,
    )


def load(path: Path) -> ScenarioSpec:
    """One scenario file; its name is the file's stem."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: {e}") from e
    return parse(path.stem, data, path)


def load_dir(folder: Path) -> list[ScenarioSpec]:
    """Every ``*.toml`` in ``folder``, sorted by name."""
    return [load(p) for p in sorted(folder.glob("*.toml"))]
