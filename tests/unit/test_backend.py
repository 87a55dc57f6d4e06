"""The live backend and the model keep one contract (kuprobe.backend.Backend): mypy checks the
assignments below, and the runtime check covers every verb by name."""

from __future__ import annotations

from pathlib import Path

from kuprobe.backend import Backend
from kuprobe.live.backend import LiveBackend
from kuprobe.model import Machine


def _typed(live: LiveBackend, model: Machine) -> tuple[Backend, Backend]:
    return live, model  # mypy: both satisfy the Protocol


def test_both_backends_have_every_verb(targets: Path) -> None:
    m = Machine.load(str(targets / "x86_64" / "target-static"))
    assert isinstance(m, Backend)
    verbs = [n for n in dir(Backend) if n.startswith(("register_", "unregister_", "e", "d"))]
    verbs = [n for n in verbs if not n.startswith("_")]
    assert len(verbs) == 13
    for name in verbs:
        assert callable(getattr(LiveBackend, name)), name
        assert callable(getattr(Machine, name)), name
