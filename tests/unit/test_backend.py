"""The live backend and the model keep one contract (kuprobe.backend.Backend): mypy checks the
assignments below; the tests check the contract's verbs by name and signature on both, and
that each verb does what its kernel namesake does on the model."""

from __future__ import annotations

import errno
import inspect
from pathlib import Path

import pytest

from kuprobe import (
    Kprobe,
    Kretprobe,
    KretprobeInstance,
    ProbeError,
    PtRegs,
    Uprobe,
    UprobeConsumer,
    register_kprobe,
    register_uprobe,
    regs_return_value,
)
from kuprobe.backend import Backend, register_probe
from kuprobe.errors import KuprobeTypeError
from kuprobe.live.backend import LiveBackend
from kuprobe.model import Machine

# include/linux/kprobes.h and include/linux/uprobes.h: the registration verbs (uprobes have
# no batch register)
VERBS = ("register_kprobe", "unregister_kprobe", "register_kprobes", "unregister_kprobes",
         "enable_kprobe", "disable_kprobe",
         "register_kretprobe", "unregister_kretprobe", "register_kretprobes",
         "unregister_kretprobes",
         "register_uprobe", "unregister_uprobe", "unregister_uprobes")  # fmt: skip
POSITIONAL, KEYWORD = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY


def _typed(live: LiveBackend, model: Machine) -> tuple[Backend, Backend]:
    return live, model  # mypy: both satisfy the Protocol


@pytest.fixture
def funcs(targets: Path) -> str:
    return str(targets / "x86_64" / "target-static")


def test_the_contract_is_the_kernels_verbs_on_both_backends(funcs: str) -> None:
    assert sorted(n for n in vars(Backend) if not n.startswith("_")) == sorted(VERBS)
    assert isinstance(Machine.load(funcs), Backend)
    for cls in (LiveBackend, Machine):
        for name in VERBS:
            want = inspect.signature(getattr(Backend, name)).parameters.values()
            got = inspect.signature(getattr(cls, name)).parameters.values()
            # self and the probe (or the probes); anything more is keyword-only and optional
            assert [p.kind for p in want] == [POSITIONAL] * 2
            assert [p.kind for p in got][:2] == [POSITIONAL] * 2, (cls, name)
            extra = list(got)[2:]
            assert all(p.kind is KEYWORD and p.default is not p.empty for p in extra), (cls, name)


def test_kprobe_verbs_on_the_model(funcs: str) -> None:
    k = Machine.load(funcs, space="kernel")
    hits: list[str] = []
    kp = Kprobe(symbol_name="add", pre_handler=lambda p, r: hits.append("add") or 0)
    k.register_kprobe(kp)
    assert k.call("add", 1, 2) == 3
    k.disable_kprobe(kp)
    assert k.call("add", 1, 2) == 3
    k.enable_kprobe(kp)
    assert k.call("add", 1, 2) == 3
    k.unregister_kprobe(kp)
    assert k.call("add", 1, 2) == 3
    assert hits == ["add", "add"]  # the disabled and the unregistered call ran no handler

    fib = Kprobe(symbol_name="fib", pre_handler=lambda p, r: hits.append("fib") or 0)
    hits.clear()
    k.register_kprobes([kp, fib])
    k.call("add", 1, 2)
    k.call("fib", 1)
    k.unregister_kprobes([kp, fib])
    k.call("add", 1, 2)
    k.call("fib", 1)
    assert hits == ["add", "fib"]

    with pytest.raises(ProbeError) as e:  # all or none: add is not left registered
        k.register_kprobes([kp, Kprobe(symbol_name="no_such_function")])
    assert e.value.errno == errno.ENOENT
    hits.clear()
    k.call("add", 1, 2)
    assert hits == []
    k.register_kprobe(kp)  # free to register again
    k.unregister_kprobe(kp)


def test_kretprobe_verbs_on_the_model(funcs: str) -> None:
    k = Machine.load(funcs, space="kernel")
    rets: list[tuple[str, int]] = []

    def on(name: str) -> Kretprobe:
        def handler(ri: KretprobeInstance, regs: PtRegs) -> int:
            rets.append((name, regs_return_value(regs)))
            return 0

        return Kretprobe(symbol_name=name, handler=handler)

    rp = on("add")
    k.register_kretprobe(rp)
    assert k.call("add", 2, 3) == 5
    k.unregister_kretprobe(rp)
    k.call("add", 2, 3)
    assert rets == [("add", 5)]

    rets.clear()
    both = [on("add"), on("fib")]
    k.register_kretprobes(both)
    k.call("add", 4, 5)
    k.call("fib", 1)
    k.unregister_kretprobes(both)
    k.call("add", 4, 5)
    assert rets == [("add", 9), ("fib", 1)]

    with pytest.raises(ProbeError) as e:
        k.register_kretprobes([rp, on("no_such_function")])
    assert e.value.errno == errno.ENOENT
    rets.clear()
    k.call("add", 2, 3)
    assert rets == []


def test_uprobe_verbs_on_the_model(funcs: str) -> None:
    m = Machine.load(funcs)
    hits: list[str] = []

    def on(name: str) -> Uprobe:
        def handler(uc: UprobeConsumer, regs: PtRegs) -> int:
            hits.append(name)
            return 0

        return Uprobe(funcs, symbol_name=name, consumer=UprobeConsumer(handler=handler))

    up = on("add")
    m.register_uprobe(up)
    assert m.call("add", 1, 2) == 3
    m.unregister_uprobe(up)
    m.call("add", 1, 2)
    assert hits == ["add"]

    hits.clear()
    both = [on("add"), on("fib")]
    for u in both:
        m.register_uprobe(u)
    m.call("add", 1, 2)
    m.call("fib", 1)
    m.unregister_uprobes(both)
    m.call("add", 1, 2)
    m.call("fib", 1)
    assert hits == ["add", "fib"]


def test_a_verb_given_another_kind_of_probe_is_a_type_error(funcs: str) -> None:
    """KuprobeTypeError: a KuprobeError, and a TypeError as Python's convention wants."""
    with pytest.raises(KuprobeTypeError, match="takes a Uprobe, not Kprobe"):
        register_uprobe(Kprobe(symbol_name="x"))  # type: ignore[arg-type]
    with pytest.raises(KuprobeTypeError, match="expected Kprobe, not Kretprobe"):
        register_kprobe(Kretprobe(symbol_name="x"))  # type: ignore[arg-type]
    with pytest.raises(KuprobeTypeError, match="not a probe: object"):
        register_probe(Machine.load(funcs), object())  # type: ignore[arg-type]
