"""tests/vm/crosscheck-ARCH.json, the model's predictions each guest's live side is checked
against (tests/vm/test_crosscheck_guest.py), are what the model predicts now: for every uprobe
scenario the vm side runs on ARCH, on the ARCH build of its program."""

from __future__ import annotations

import json
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
