"""The scenarios' live side in the arm64 guest, against the model's predictions.

Every scenario the ``vm`` side runs on arm64 (``kuprobe.crosscheck.runs.plan``) runs here on the
guest's kernel (uprobes on tests/targets/build/arm64/scenarios, limited to the driven process)
and must observe exactly what the model predicted for this kernel. The model does not run here:
the guest's Python has no working Unicorn (and under TCG it would be slow), so its predictions
come from the host, in crosscheck-arm64.json beside this file, which
tests/unit/test_crosscheck_predictions.py keeps equal to what the model says now.
``kuprobe crosscheck --side vm --arch arm64`` does the same from the host in one command.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kuprobe.crosscheck import SCENARIOS, diff
from kuprobe.crosscheck._sides import run_live
from kuprobe.crosscheck.guest import vm_scenarios
from kuprobe.crosscheck.runs import decode_observation

pytestmark = [pytest.mark.vm, pytest.mark.arches("arm64")]

PREDICTIONS = Path(__file__).with_name("crosscheck-arm64.json")
CASES = vm_scenarios("arm64")


@pytest.fixture(scope="module")
def predictions() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PREDICTIONS.read_text())
    return data


def test_the_predictions_are_for_this_kernel_and_every_scenario(
    predictions: dict[str, Any],
) -> None:
    assert predictions["release"] == os.uname().release, (
        f"{PREDICTIONS.name} predicts for {predictions['release']}: regenerate it (its first line "
        "says how)"
    )
    assert list(predictions["scenarios"]) == CASES
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", CASES)
def test_the_live_kernel_agrees_with_the_model(
    name: str, targets: Path, guest_arch: str, predictions: dict[str, Any]
) -> None:
    spec = SCENARIOS[name].spec
    assert spec is not None
    live = run_live(targets / guest_arch / spec.program, spec)
    model = decode_observation(predictions["scenarios"][name])
    assert diff(model, live) == []
    assert live == model
