"""The scenarios' live side in each guest, against the model's predictions.

Every uprobe scenario the ``vm`` side runs on the guest's arch (``kuprobe.crosscheck.runs.plan``:
arm64, x86_64) runs here on the guest's kernel (uprobes on tests/targets/build/ARCH/scenarios,
limited to the driven process) and must observe exactly what the model predicted for this
kernel. The model does not run here (under TCG it would be slow, and the arm64 image's unicorn
does not import, for want of distutils), so its predictions come from the host: ``kuprobe vm
test`` computes them for the kernel this image boots, just before it boots it, and names the
file in $KUPROBE_PREDICTIONS. Nothing checked in names a kernel release, so a new Debian kernel
ABI needs nothing regenerated. ``kuprobe crosscheck --side vm`` does the same from the host in
one command. (Kprobe scenarios have their own VM tests.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kuprobe.crosscheck import SCENARIOS, diff
from kuprobe.crosscheck.guest import PREDICTIONS_ENV, vm_scenarios
from kuprobe.crosscheck.runs import decode_observation
from kuprobe.crosscheck.sides import run_live

from .conftest import GUEST_ARCH

pytestmark = [pytest.mark.vm, pytest.mark.arches("arm64", "x86_64")]

CASES = vm_scenarios(GUEST_ARCH or "x86_64", uprobes_only=True)


@pytest.fixture(scope="module")
def predictions() -> dict[str, Any]:
    path = os.environ.get(PREDICTIONS_ENV)
    assert path, (
        f"${PREDICTIONS_ENV} names no predictions file: run the guest's suite with `kuprobe vm "
        "test`, which computes the model's predictions for this kernel on the host"
    )
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def test_the_predictions_are_for_this_kernel_and_every_scenario(
    predictions: dict[str, Any],
) -> None:
    assert predictions["release"] == os.uname().release
    assert predictions["arch"] == GUEST_ARCH
    assert list(predictions["scenarios"]) == CASES
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", CASES)
def test_the_live_kernel_agrees_with_the_model(
    name: str, targets: Path, predictions: dict[str, Any]
) -> None:
    spec = SCENARIOS[name].spec
    assert spec is not None
    live = run_live(targets / spec.program, spec)
    model = decode_observation(predictions["scenarios"][name])
    assert diff(model, live) == []
    assert live == model
