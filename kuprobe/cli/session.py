"""Probes made from specs, registered live, and what their handlers record.

The handlers run on the live backend's dispatcher thread and only do single-writer updates
of plain containers (an int, a list slot, a dict entry): the display reads copies of them
and never takes a lock the event path could wait on.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kuprobe.backend import Backend, register_all_or_none, register_probe, unregister_probe
from kuprobe.cli.latency import LATENCY_BOUNDS, LATENCY_BUCKETS
from kuprobe.cli.sample import ProbeSample, Sample
from kuprobe.cli.spec import (
    ProbeSpec,
    Value,
    format_memory,
    format_value,
    memory_value,
    value_of,
)
from kuprobe.probes import Kprobe, Kretprobe, KretprobeInstance, Uprobe, UprobeConsumer
from kuprobe.regs import PtRegs
from kuprobe.task import Task, current
from kuprobe.usdt import Usdt, UsdtSite

MAX_DEPTH = 64  # kernel/events/uprobes.c: MAX_URETPROBE_DEPTH; entries kept per thread
# s: once the user stops (Ctrl-C, q), how long the events recorded before get to be handled
# (and printed, by trace); the rest are counted. A flood's queue can hold ~47k events.
AFTER_STOP = 0.5
_STALE_THREADS = 4096  # forget entry stacks (threads that exited mid-call) beyond this


@dataclass(frozen=True, slots=True)
class Event:
    """One event as ``kuprobe trace`` prints it."""

    ts: int  # ns, CLOCK_MONOTONIC
    task: Task
    watch: Watch
    returned: bool
    values: tuple[str, ...]  # as printed: "arg0=5", "retval=0x1f"
    latency_ns: int | None
    data: tuple[tuple[str, Value], ...] = ()  # the same as numbers or text, for --format json
    stack: tuple[str, ...] | None = None  # symbolized frames, innermost first (--stack)


EventSink = Callable[[Event], None]


def _ts(regs: PtRegs) -> int:
    # The live snapshot's own timestamp (bpf_ktime_get_ns at the trap); the time the
    # handler ran if the backend does not give one.
    ts = getattr(regs, "ts", None)
    return int(ts) if ts else time.monotonic_ns()


@dataclass(eq=False, repr=False)
class Watch:
    """One spec's probe and the statistics its handlers keep."""

    spec: ProbeSpec
    pid: int | None = None
    sink: EventSink | None = None
    name: str | None = None  # the row's label; the spec's own short form by default
    stack: bool = False  # record and symbolize the stack of each event (kuprobe/stacks.py)
    probe: Any = None
    probes: tuple[Any, ...] = ()  # every probe of the watch: a USDT probe's sites, else probe
    usdt: Usdt | None = None
    hist: list[int] = field(default_factory=lambda: [0] * LATENCY_BUCKETS)
    tasks: dict[tuple[int, str], int] = field(default_factory=dict)
    _starts: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.spec.kind == "usdt":
            self.usdt = Usdt(
                self.spec.path or "",
                self.spec.provider or "",
                self.spec.symbol or "",
                handler=self._usdt_hit,
                pid=self.pid,
                stack=self.stack,
                capture=tuple(a.capture(kernel=False) for a in self.spec.args if a.memory),
            )
            self.probes = tuple(self.usdt.uprobes)
            self.probe = self.probes[0]
        else:
            self.probe = self._make_probe()
            self.probes = (self.probe,)

    @property
    def label(self) -> str:
        return self.name or self.spec.label

    def __repr__(self) -> str:
        return f"Watch({self.label!r})"

    # --- building the probe object ---

    def _make_probe(self) -> Kprobe | Kretprobe | Uprobe:
        spec = self.spec
        capture = tuple(a.capture(kernel=spec.is_kernel) for a in spec.args if a.memory)
        if spec.kind == "k":
            return Kprobe(
                symbol_name=spec.symbol,
                offset=spec.offset,
                pre_handler=self._kp_pre,
                capture=capture,
                stack=self.stack,
            )
        if spec.kind == "kr":
            return Kretprobe(
                symbol_name=spec.symbol,
                handler=self._kr_ret,
                entry_handler=self._kr_entry,
                capture=capture,
                stack=self.stack,
            )
        consumer = UprobeConsumer(
            handler=self._u_entry, ret_handler=self._u_ret if spec.is_return else None
        )
        return Uprobe(
            path=spec.path or "",
            offset=spec.offset,
            symbol_name=spec.symbol,
            consumer=consumer,
            pid=self.pid,
            capture=capture,
            stack=self.stack,
        )

    # --- handlers (dispatcher thread) ---

    def _kp_pre(self, _p: Kprobe, regs: PtRegs) -> int:
        self._entry(regs, record=False)
        return 0

    def _kr_entry(self, _ri: KretprobeInstance, regs: PtRegs) -> int:
        self._entry(regs, record=True)
        return 0

    def _kr_ret(self, _ri: KretprobeInstance, regs: PtRegs) -> int:
        self._return(regs)
        return 0

    def _u_entry(self, _uc: UprobeConsumer, regs: PtRegs) -> int:
        self._entry(regs, record=self.spec.is_return)
        return 0

    def _u_ret(self, _uc: UprobeConsumer, _func: int, regs: PtRegs) -> int:
        self._return(regs)
        return 0

    def _usdt_hit(self, site: UsdtSite, regs: PtRegs) -> int:
        self._entry(regs, record=False, site=site)
        return 0

    def _entry(self, regs: PtRegs, *, record: bool, site: UsdtSite | None = None) -> None:
        task = current()
        if self.pid is not None and task.tgid != self.pid:
            return  # kprobes have no pid filter in the kernel: filter here
        if record:
            ts = _ts(regs)
            starts = self._starts.get(task.pid)
            if starts is None:
                if len(self._starts) >= _STALE_THREADS:
                    self._starts.clear()
                starts = self._starts[task.pid] = []
            if len(starts) < MAX_DEPTH:
                starts.append(ts)
            return  # a return probe is counted and printed at the return
        self._count(task)
        if self.sink is not None:
            self.sink(self._event(_ts(regs), task, regs, False, None, site))

    def _return(self, regs: PtRegs) -> None:
        task = current()
        if self.pid is not None and task.tgid != self.pid:
            return
        ts = _ts(regs)
        latency = None
        starts = self._starts.get(task.pid)
        if starts:
            latency = max(ts - starts.pop(), 0)
            self.hist[bisect_right(LATENCY_BOUNDS, latency)] += 1
        self._count(task)
        if self.sink is not None:
            self.sink(self._event(ts, task, regs, True, latency))

    def _count(self, task: Task) -> None:
        key = (task.tgid, task.comm)
        self.tasks[key] = self.tasks.get(key, 0) + 1

    def _event(
        self,
        ts: int,
        task: Task,
        regs: PtRegs,
        returned: bool,
        latency: int | None,
        site: UsdtSite | None = None,
    ) -> Event:
        user = not self.spec.is_kernel
        data: list[tuple[str, Value]] = []
        shown: list[str] = []
        for a in self.spec.args:
            if a.memory is not None:
                mem = memory_value(regs, a, user=user, site=site)
                data.append((str(a), mem))
                shown.append(format_memory(a, mem))
            else:
                value = value_of(regs, a, user=user, site=site)
                data.append((a.name, value))
                shown.append(format_value(regs, a, value))
        frames = self._frames(task) if self.stack else None
        return Event(ts, task, self, returned, tuple(shown), latency, tuple(data), frames)

    def _frames(self, task: Task) -> tuple[str, ...]:
        from kuprobe.errors import ProbeError
        from kuprobe.stacks import (
            stack_trace_save,
            stack_trace_save_user,
            symbolize_kernel,
            symbolize_user,
        )

        try:
            if self.spec.is_kernel:
                return tuple(map(str, symbolize_kernel(stack_trace_save())))
            return tuple(map(str, symbolize_user(stack_trace_save_user(), task.tgid)))
        except ProbeError as e:
            return (f"<{e.strerror}>",)

    # --- reading (any thread) ---

    def sample(self) -> ProbeSample:
        ps = self.probes
        ret = self.spec.is_return
        uret = ret and all(isinstance(p, Uprobe) for p in ps)  # entry and return apart
        return ProbeSample(
            label=self.label,
            is_return=ret,
            hits=sum(p.ret_hits if uret else p.hits for p in ps),
            nmissed=sum(getattr(p, "nmissed", 0) for p in ps),
            lost=sum(p.ret_lost if uret else p.lost for p in ps),
            dropped=sum(p.ret_dropped if uret else p.dropped for p in ps),
            entry_lost=sum(p.lost for p in ps) if uret else 0,
            handler_errors=sum(p.handler_errors for p in ps),
            latency=tuple(self.hist) if self.spec.is_return else None,
        )


class Session:
    """A set of watches registered together on one backend (all or none) and a source of
    samples. The backend is the live kernel's by default, or a model ``Machine``."""

    def __init__(self, watches: Sequence[Watch], backend: Backend | None = None) -> None:
        self.watches = tuple(watches)
        self.backend = backend
        self._registered: list[Watch] = []

    def _backend(self) -> Backend:
        if self.backend is None:
            from kuprobe.live.api import backend

            self.backend = backend()
        return self.backend

    def register(self) -> None:
        """Register every probe; on a refusal unregister those done and re-raise."""
        backend = self._backend()
        register_all_or_none(
            self.watches,
            lambda w: self._register_one(backend, w),
            lambda w: self._unregister_one(backend, w),
        )

    def _register_one(self, backend: Backend, w: Watch) -> None:
        register_all_or_none(
            w.probes, lambda p: register_probe(backend, p), lambda p: unregister_probe(backend, p)
        )
        self._registered.append(w)

    def _unregister_one(self, backend: Backend, w: Watch) -> None:
        if w in self._registered:
            self._registered.remove(w)
        for p in w.probes:
            if p.registered:  # the backend's own SIGINT/exit hook may have been first
                unregister_probe(backend, p)

    def unregister(self, *, timeout: float | None = None) -> None:
        """Unregister every probe in one batch per kind (the backend's ``unregister_uprobes``
        and friends: on the live backend the kernel's grace periods run side by side, one wait
        for all instead of one per probe); afterwards no handler runs and counters are final.
        With ``timeout`` (s), the live backend counts the events still queued then in each
        probe's ``dropped`` instead of handling them (the model runs each handler at its hit:
        nothing is queued there).
        """
        if self.backend is None:
            return
        backend = self.backend
        done, self._registered = list(reversed(self._registered)), []
        # those still registered: the backend's own exit hook may have been first
        live = [p for w in done for p in w.probes if p.registered]
        if timeout is not None:
            from kuprobe.live.backend import LiveBackend

            if isinstance(backend, LiveBackend):  # every kind in one batch, one deadline
                backend.unregister_many(live, timeout=timeout)
                return
        ups = [p for p in live if isinstance(p, Uprobe)]
        kps = [p for p in live if isinstance(p, Kprobe)]
        rps = [p for p in live if isinstance(p, Kretprobe)]
        try:
            if ups:
                backend.unregister_uprobes(ups)
        finally:
            try:
                if kps:
                    backend.unregister_kprobes(kps)
            finally:
                if rps:
                    backend.unregister_kretprobes(rps)

    @contextmanager
    def active(self, *, timeout: float | None = None) -> Iterator[Session]:
        """Registered for the block; ``timeout``: ``unregister``'s at its end."""
        self.register()
        try:
            yield self
        finally:
            self.unregister(timeout=timeout)

    def sample(self) -> Sample:
        tasks: dict[tuple[int, str], int] = {}
        for w in self.watches:
            for key, n in w.tasks.copy().items():  # dict.copy(): atomic under the GIL
                tasks[key] = tasks.get(key, 0) + n
        return Sample(
            time=time.monotonic(),
            probes=tuple(w.sample() for w in self.watches),
            tasks=tasks,
        )
