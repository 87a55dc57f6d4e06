"""Kernel-side consumers: kprobes with C handlers in the test module against the model's.

The kprobe scenarios (``_kprobes.py``) check the live side through kuprobe's BPF backend,
whose handlers never fault and have no post_handler. Here the consumers are the kernel's own:
``kuprobe/targets/kmod/kk_probes.c`` registers real kprobes and kretprobes on the module's
kk_* functions (``/proc/kuprobe_kmod_probes``), its C handlers record each call; the model
runs the same probes on the module's running image (``Machine.load(..., space="kernel",
semantics=<the running release>)``) with Python handlers that do and record the same. Both
are normalised to :class:`Record` rows (addresses as ``kk_fn+0xoff``) and compared, with
each call's result and each probe's nmissed.

A handler's action: ``record``; ``fault`` (record, then read a user address no task maps:
the kernel's get_user() result, the model's ``Machine.copy_from_user()`` through its fault
path, -EFAULT both once the fault is fixed up); ``call:FUNC`` (record, then FUNC(3, 4, 0, 0,
0, 0) from inside the handler: a probe on FUNC is hit while this one runs). ``fault_record``
on a kprobe is a fault_handler that records trapnr (refused from 5.14 on, both sides).

The scenarios are the table ``KCONSUMER_SCENARIOS`` (the TOML spec has no handler actions).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kuprobe.crosscheck import _kmod
from kuprobe.crosscheck._kprobes import ARCH, KmodTarget, kmod_target
from kuprobe.crosscheck.spec import ScenarioError
from kuprobe.errors import ProbeError
from kuprobe.insn import disassembler
from kuprobe.probes import Kprobe, Kretprobe, KretprobeInstance
from kuprobe.regs import PtRegs, regs_get_kernel_argument, regs_return_value, signed
from kuprobe.targets.kmod import MODULE

PROBES_PROC = Path("/proc") / f"{MODULE}_probes"
# kk_probes.c: KK_BAD_USER (below vm.mmap_min_addr) and the arguments of "call:FUNC"
BAD_USER = 8
CALL_ARGS = (3, 4, 0, 0, 0, 0)
NARGS = 6
OUTSIDE = "outside"  # an address in no target (the caller of a top-level call)
# kk_funcs.c's table: the functions that are targets (not the module's /proc plumbing)
TARGETS = frozenset(
    [
        "kk_add",
        "kk_args6",
        "kk_neg",
        "kk_rec",
        "kk_regs",
        "kk_riprel",
        "kk_nops",
        "kk_push",
        "kk_caller",
        "kk_jt",
        "kk_loop",
        "kk_sleep",
    ]
)


@dataclass(frozen=True)
class KConsumer:
    """One kprobe or kretprobe of kk_probes.c, and the action of each of its handlers."""

    kind: str  # "kprobe" or "kretprobe"
    symbol: str
    offset: int = 0
    insn: str | None = None  # instead of offset: the nth instruction of this mnemonic
    nth: int = 0
    pre: str = "none"
    post: str = "none"
    fault: bool = False  # a fault_handler that records trapnr
    entry: str = "none"
    ret: str = "none"
    maxactive: int = 0

    def command(self, offset: int) -> str:
        """The line kk_probes.c takes."""
        if self.kind == "kretprobe":
            words = [f"kretprobe {self.symbol}", f"entry={self.entry}", f"ret={self.ret}"]
            return " ".join([*words, f"maxactive={self.maxactive}"])
        words = [f"kprobe {self.symbol} {offset}", f"pre={self.pre}", f"post={self.post}"]
        return " ".join(words + (["fault=record"] if self.fault else []))


@dataclass(frozen=True)
class KScenario:
    name: str
    description: str
    consumers: tuple[KConsumer, ...]
    calls: tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class Record:
    """One handler call, as both sides report it."""

    probe: int
    kind: str  # pre, post, fault, entry, ret
    ip: str
    flags: int
    args: tuple[int, ...]
    ret: int
    ret_addr: str
    result: int
    trapnr: int

    def __str__(self) -> str:
        return (f"probe {self.probe} {self.kind} ip={self.ip} flags={self.flags} "
                f"args={self.args} ret={self.ret} retaddr={self.ret_addr} "
                f"result={self.result} trapnr={self.trapnr}")  # fmt: skip


@dataclass(frozen=True)
class RawRecord:
    """A record with its addresses still absolute."""

    probe: int
    kind: str
    ip: int
    flags: int = 0
    args: tuple[int, ...] = ()
    ret: int = 0
    ret_addr: int = 0
    result: int = 0
    trapnr: int = 0


KObservation = dict[str, Any]  # a kernel-consumer run, fact by fact


def place(target: KmodTarget, c: KConsumer) -> int:
    """``c``'s offset from the start of its function, decoded from the running bytes."""
    if c.insn is None:
        return c.offset
    addr, code = target.image.function(c.symbol)
    found = [int(i.address) - addr for i in disassembler(ARCH).disasm(code, addr)
             if i.mnemonic == c.insn]  # fmt: skip
    if len(found) <= c.nth:
        raise ScenarioError(f"{c.symbol} has {len(found)} {c.insn!r}, no number {c.nth}")
    return found[c.nth]


def where(target: KmodTarget, addr: int) -> str:
    """``kk_fn+0xoff`` for an address in one of the module's target functions."""
    for name, (start, size) in target.image.symbols.items():
        if name in TARGETS and start <= addr < start + size:
            return f"{name}+{addr - start:#x}"
    return OUTSIDE


def normalise(target: KmodTarget, raw: Sequence[RawRecord]) -> tuple[Record, ...]:
    def one(r: RawRecord) -> Record:
        ret_addr = where(target, r.ret_addr) if r.ret_addr else ""
        return Record(r.probe, r.kind, where(target, r.ip), r.flags, r.args, r.ret, ret_addr,
                      r.result, r.trapnr)  # fmt: skip

    return tuple(one(r) for r in raw)


def observation(target: KmodTarget, s: KScenario, results: Sequence[int],
                refused: dict[int, int], nmissed: dict[int, int],
                raw: Sequence[RawRecord]) -> KObservation:  # fmt: skip
    obs: KObservation = {}
    for i, ((func, args), r) in enumerate(zip(s.calls, results, strict=True)):
        obs[f"call {i + 1}: {func}{args}"] = r
    for i, c in enumerate(s.consumers):
        label = f"probe {i} ({c.command(place(target, c))})"
        if i in refused:
            obs[f"{label} refused (errno)"] = refused[i]
        else:
            obs[f"{label} nmissed"] = nmissed[i]
    obs["records, in order"] = normalise(target, raw)
    return obs


# --- the live kernel: kk_probes.c ------------------------------------------------------------


def _command(line: str) -> None:
    fd = os.open(PROBES_PROC, os.O_WRONLY)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def parse(text: str) -> tuple[list[RawRecord], dict[int, int], int]:
    """kk_probes.c's read-out: the records, each probe's nmissed (a kretprobe's: its kprobe's
    and its own, summed as kprobe_profile sums them), the records lost."""
    records: list[RawRecord] = []
    nmissed: dict[int, int] = {}
    lost = 0
    for line in text.splitlines():
        words = line.split()
        if words[0] == "lost":
            lost = int(words[1])
            continue
        kv = dict(w.split("=", 1) for w in words[2:])
        if words[0] == "probe":
            nmissed[int(words[1])] = int(kv["nmissed"]) + int(kv["rpmissed"])
            continue
        records.append(RawRecord(
            int(kv["probe"]), kv["kind"], int(kv["ip"], 16), int(kv["flags"]),
            tuple(int(a) for a in kv["args"].split(",")), int(kv["ret"]),
            int(kv["retaddr"], 16), int(kv["result"]), int(kv["trapnr"]),
        ))  # fmt: skip
    return records, nmissed, lost


def run_live(s: KScenario, target: KmodTarget | None = None) -> KObservation:
    """``s`` with kk_probes.c's consumers in this (the guest's) kernel."""
    target = target or kmod_target()
    refused: dict[int, int] = {}
    _command("clear")
    try:
        live_ids: dict[int, int] = {}
        for i, c in enumerate(s.consumers):
            try:
                _command(c.command(place(target, c)))
            except OSError as e:
                refused[i] = e.errno or errno.EIO
            else:
                live_ids[len(live_ids)] = i
        results = [_kmod.call(f, *args, *(0,) * (NARGS - len(args))) for f, args in s.calls]
        raw, missed, lost = parse(PROBES_PROC.read_text())
    finally:
        _command("clear")
    if lost:
        raise ScenarioError(f"{s.name}: {lost} records did not fit kk_probes.c's array")
    # kk_probes.c numbers the registered ones only
    raw = [replace(r, probe=live_ids[r.probe]) for r in raw]
    nmissed = {live_ids[k]: v for k, v in missed.items()}
    return observation(target, s, results, refused, nmissed, raw)


# --- the model: the same consumers in Python -------------------------------------------------


@dataclass
class _ModelSide:
    machine: Any  # kuprobe.model.Machine
    records: list[RawRecord] = field(default_factory=list)

    def _args(self, regs: PtRegs) -> tuple[int, ...]:
        return tuple(signed(regs_get_kernel_argument(regs, i)) for i in range(NARGS))

    def _do(self, action: str) -> int:
        if action == "fault":
            try:  # Machine.copy_from_user(): the model's fault path (kprobe_fault_handler())
                data = self.machine.copy_from_user(BAD_USER, 8)
            except ProbeError as e:
                return -(e.errno or errno.EFAULT)
            return signed(int.from_bytes(data, "little"))
        if action.startswith("call:"):
            return int(self.machine.call(action[5:], *CALL_ARGS))
        return 0

    def handle(self, i: int, kind: str, action: str, regs: PtRegs,
               extra: Callable[[RawRecord], RawRecord] | None = None) -> None:  # fmt: skip
        """kk_probes.c: kk_handle(): record, then the action; the result into the record."""
        if action == "none":
            return
        at = len(self.records)
        ip = int(regs.ip)
        self.records.append(RawRecord(i, kind, ip, args=self._args(regs)))
        result = self._do(action)
        r = replace(self.records[at], result=result)
        self.records[at] = extra(r) if extra else r

    def probe(self, i: int, c: KConsumer, offset: int) -> Kprobe | Kretprobe:
        if c.kind == "kretprobe":

            def entry(_ri: KretprobeInstance, regs: PtRegs) -> int:
                self.handle(i, "entry", c.entry, regs)
                return 0

            def ret(ri: KretprobeInstance, regs: PtRegs) -> int:
                value = signed(regs_return_value(regs))

                def more(r: RawRecord) -> RawRecord:
                    return replace(r, ret=value, ret_addr=ri.ret_addr)

                self.handle(i, "ret", c.ret, regs, more)
                return 0

            return Kretprobe(
                symbol_name=c.symbol,
                entry_handler=entry if c.entry != "none" else None,
                handler=ret,
                maxactive=c.maxactive,
            )

        def pre(_p: Kprobe, regs: PtRegs) -> int:
            self.handle(i, "pre", c.pre, regs)
            return 0

        def post(_p: Kprobe, regs: PtRegs, flags: int) -> None:
            def more(r: RawRecord) -> RawRecord:
                return replace(r, flags=flags)

            self.handle(i, "post", c.post, regs, more)

        def fault(_p: Kprobe, regs: PtRegs, trapnr: int) -> int:
            ip = int(regs.ip)
            self.records.append(RawRecord(i, "fault", ip, args=self._args(regs), trapnr=trapnr))
            return 0

        return Kprobe(
            symbol_name=c.symbol,
            offset=offset,
            pre_handler=pre if c.pre != "none" else None,
            post_handler=post if c.post != "none" else None,
            fault_handler=fault if c.fault else None,
        )


def run_model(s: KScenario, target: KmodTarget | None = None,
              semantics: str | None = None) -> KObservation:  # fmt: skip
    """``s`` on a Machine of the module's running image, with the running kernel's rules."""
    from kuprobe.model import Machine

    target = target or kmod_target()
    machine = Machine.load(target.elf, space="kernel", strict=True,
                           semantics=semantics or os.uname().release)  # fmt: skip
    side = _ModelSide(machine)
    refused: dict[int, int] = {}
    registered: list[Kprobe | Kretprobe] = []
    probes: dict[int, Kprobe | Kretprobe] = {}
    try:
        for i, c in enumerate(s.consumers):
            kp = side.probe(i, c, place(target, c))
            try:
                if isinstance(kp, Kprobe):
                    machine.register_kprobe(kp)
                else:
                    machine.register_kretprobe(kp)
            except ProbeError as e:
                refused[i] = e.errno or errno.EINVAL
            else:
                registered.append(kp)
                probes[i] = kp
        results = [machine.call(f, *args, *(0,) * (NARGS - len(args))) for f, args in s.calls]
    finally:
        machine.unregister_kprobes([p for p in registered if isinstance(p, Kprobe)])
        machine.unregister_kretprobes([p for p in registered if isinstance(p, Kretprobe)])
    nmissed = {i: kp.nmissed for i, kp in probes.items()}
    return observation(target, s, results, refused, nmissed, side.records)


def differences(model: KObservation, live: KObservation) -> list[str]:
    """Each fact that differs, and each record that differs, in words."""
    out = []
    for key in sorted(set(model) | set(live)):
        if key == "records, in order":
            continue
        if model.get(key) != live.get(key):
            out.append(f"{key}: model {model.get(key)!r}, kernel {live.get(key)!r}")
    m, k = model.get("records, in order", ()), live.get("records, in order", ())
    for n in range(max(len(m), len(k))):
        a = m[n] if n < len(m) else None
        b = k[n] if n < len(k) else None
        if a != b:
            out.append(f"record {n}: model {a}, kernel {b}")
    return out


K = KConsumer
KCONSUMER_SCENARIOS: dict[str, KScenario] = {
    s.name: s
    for s in (
        KScenario(
            "pre-post-plain",
            "pre_handler and post_handler on kk_add's entry (an ftrace-based kprobe on the "
            "live kernel) and on kk_args6's lea (single-stepped): ip +1 in the pre_handler, "
            "the next instruction and flags 0 in the post_handler",
            (K("kprobe", "kk_add", 0, pre="record", post="record"),
             K("kprobe", "kk_args6", 5, pre="record", post="record")),
            (("kk_add", (1, 2)), ("kk_args6", (1, 2, 3, 4, 5, 6)), ("kk_add", (-7, 9))),
        ),
        KScenario(
            "post-emulated-vs-stepped",
            "post_handlers after an emulated call (ip at its target) and jcc (taken and "
            "not), after a push and after a single-stepped nop",
            (K("kprobe", "kk_caller", insn="call", pre="record", post="record"),
             K("kprobe", "kk_nops", insn="nop", nth=1, pre="record", post="record"),
             K("kprobe", "kk_push", insn="push", pre="record", post="record"),
             K("kprobe", "kk_loop", insn="jne", post="record")),
            (("kk_caller", (2, 3)), ("kk_nops", (5,)), ("kk_push", (8,)), ("kk_loop", (3,))),
        ),
        KScenario(
            "kretprobe-entry-ret",
            "kretprobes with entry_handler and handler on kk_neg and kk_add, beside a "
            "kprobe on kk_neg's entry: return values, return addresses, the order",
            # no post_handler joins the ftrace-based aggregate on kk_neg's entry: 6.1 then
            # disarms it through the other ftrace_ops (kernel/kprobes.c:
            # disarm_kprobe_ftrace() picks kprobe_ipmodify_ops by ap->post_handler), fails
            # ("Failed to disarm kprobe-ftrace", -ENOENT) and leaves the freed kprobe hashed
            (K("kretprobe", "kk_neg", entry="record", ret="record", maxactive=2),
             K("kprobe", "kk_neg", 0, pre="record"),
             K("kretprobe", "kk_add", entry="record", ret="record")),
            (("kk_neg", (5,)), ("kk_caller", (2, 3)), ("kk_add", (-1, -2))),
        ),
        KScenario(
            "fault-in-handler",
            "pre, post, entry and return handlers reading a user address no task maps, and "
            "a fault_handler (refused since 5.14)",
            (K("kprobe", "kk_add", 0, pre="fault", post="fault"),
             K("kprobe", "kk_args6", 5, pre="fault", post="record"),
             K("kretprobe", "kk_neg", entry="fault", ret="fault"),
             K("kprobe", "kk_loop", 0, pre="record", fault=True)),
            (("kk_add", (1, 2)), ("kk_args6", (1, 2, 3, 4, 5, 6)), ("kk_neg", (4,))),
        ),
        KScenario(
            "reentry-nmissed",
            "a probed function called from inside pre, post and return handlers: the inner "
            "probes are missed (nmissed), the outer ones go on",
            (K("kprobe", "kk_args6", 5, pre="call:kk_add", post="call:kk_neg"),
             K("kprobe", "kk_add", 0, pre="record"),
             K("kretprobe", "kk_neg", entry="record", ret="call:kk_add"),
             K("kprobe", "kk_caller", 0, pre="call:kk_add")),
            (("kk_args6", (1, 2, 3, 4, 5, 6)), ("kk_neg", (2,)), ("kk_caller", (2, 3)),
             ("kk_add", (5, 5))),
        ),
    )
}  # fmt: skip
