"""tests/vm/crosscheck-arm64.json, the model's predictions the arm64 guest's live side is
checked against (tests/vm/test_crosscheck_guest.py), is what the model predicts now: for every
scenario the vm side runs on arm64, on the arm64 build of its program."""

from __future__ import annotations

import json
from pathlib import Path

from kuprobe.crosscheck.guest import dump_predictions, predict, vm_scenarios
from kuprobe.crosscheck.scenarios import SCENARIOS

FILE = Path(__file__).resolve().parents[1] / "vm" / "crosscheck-arm64.json"


def test_the_arm64_predictions_are_current(targets: Path) -> None:
    text = FILE.read_text()
    assert text.startswith('{"generated": "by `python -m kuprobe.crosscheck.guest --predict')
    release = json.loads(text)["release"]
    specs = [SCENARIOS[n].spec for n in vm_scenarios("arm64")]
    now = dump_predictions(predict([s for s in specs if s], "arm64", targets, release))
    assert text == now, (
        f"{FILE} is stale: regenerate it (its first line says how; RELEASE {release})"
    )
