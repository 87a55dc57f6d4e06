"""Model fixtures: every registered arch, the built targets, fresh Machines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kuprobe.model import ARCH_HOOKS, Machine
from kuprobe.model.core.uprobes import REGISTRY


@pytest.fixture(params=sorted(ARCH_HOOKS))
def arch(request: pytest.FixtureRequest) -> str:
    """Each arch the model registers (a new arch runs every model test)."""
    return str(request.param)


@pytest.fixture
def funcs(targets: Path, arch: str) -> str:
    """target-static: funcs.c's functions (add, fib, loop_sum, sw, table_sum, calls …)."""
    return str(targets / arch / "target-static")


@pytest.fixture
def mfuncs(targets: Path, arch: str) -> str:
    """model_funcs-static: model_rec, model_load, model_indirect, model_jumptable …"""
    return str(targets / arch / "model_funcs-static")


@pytest.fixture
def kernel(funcs: str) -> Machine:
    return Machine.load(funcs, space="kernel")


@pytest.fixture
def seed_kernel(funcs: str) -> Machine:
    """funcs as kernel text, with the seed patches' rules (kuprobe.model.semantics.SEED)."""
    return Machine.load(funcs, space="kernel", semantics="seed")


@pytest.fixture
def mkernel(mfuncs: str) -> Machine:
    return Machine.load(mfuncs, space="kernel")


@pytest.fixture
def user(funcs: str) -> Machine:
    return Machine.load(funcs)


@pytest.fixture
def muser(mfuncs: str) -> Machine:
    return Machine.load(mfuncs)


def _unregister_all() -> list[tuple[str, list[int]]]:
    left = [(f.path, sorted(f.uprobes)) for f in REGISTRY.files.values()]
    for f in list(REGISTRY.files.values()):
        for entry in list(f.uprobes.values()):
            for up in list(entry.consumers):
                REGISTRY.unregister(up)
    return left


@pytest.fixture(autouse=True)
def _no_leftover_uprobes() -> Iterator[None]:
    """Uprobes are global, as in the kernel: each test starts with none registered (what
    other suites left is dropped) and must unregister what it registers."""
    _unregister_all()
    yield
    left = _unregister_all()
    assert not left, f"uprobes left registered: {left}"
