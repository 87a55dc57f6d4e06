"""tests/vm/crosscheck-ARCH.json, the model's predictions each guest's live side is checked
against (tests/vm/test_crosscheck_guest.py), are what the model predicts now: for every uprobe
scenario the vm side runs on ARCH, on the ARCH build of its program."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kuprobe.crosscheck.guest import dump_predictions, predict, predictions_path, vm_scenarios
from kuprobe.crosscheck.runs import GUEST_ARCHES
from kuprobe.crosscheck.scenarios import SCENARIOS


@pytest.mark.parametrize("arch", GUEST_ARCHES)
def test_the_predictions_are_current(targets: Path, arch: str) -> None:
    path = predictions_path(arch)
    text = path.read_text()
    assert text.startswith('{"generated": "by `python -m kuprobe.crosscheck.guest --predict')
    release = json.loads(text)["release"]
    specs = [SCENARIOS[n].spec for n in vm_scenarios(arch, uprobes_only=True)]
    now = dump_predictions(predict([s for s in specs if s], arch, targets, release))
    assert text == now, f"{path} is stale: regenerate it (its first line says how; {release})"


def test_the_guests_live_side_needs_no_unicorn() -> None:
    """The arm64 guest's Debian unicorn does not import (it wants distutils): the cross-check's
    live side there reads its kernel's rules (kuprobe.model.semantics) without the emulator.
    Before, ``kuprobe.model`` imported Machine, hence Unicorn, for any of its modules."""
    script = (
        "import sys; sys.modules['unicorn'] = None\n"  # as if it failed to import
        "from kuprobe.crosscheck.guest import model_semantics\n"
        "print(model_semantics('6.1.0-56-arm64'))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["6.1.0-56-arm64"]
