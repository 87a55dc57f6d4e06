"""Shared fixtures: the built probe targets, and what this machine can run.

Tests marked ``live`` skip only when a capability is missing, and the skip names it;
scripts/test.sh (what CI runs) fails if any was skipped on a machine that has them all.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ROOT / "tests" / "targets"
BUILD = TARGETS / "build"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        # Read back from the JUnit XML by tests/gate.py (scripts/test.sh): a capable machine
        # that skipped one of these fails the run.
        for marker in ("live", "vm"):
            if item.get_closest_marker(marker) is not None:
                item.user_properties.append((marker, "1"))


@pytest.fixture(scope="session")
def targets() -> Path:
    """tests/targets/build, (re)built if its sources changed."""
    subprocess.run(["bash", str(TARGETS / "build.sh")], check=True, capture_output=True)
    return BUILD


@pytest.fixture(scope="session")
def live_capable() -> None:
    from kuprobe.live.checks import live_uprobes_possible

    ok, why = live_uprobes_possible()
    if not ok:
        pytest.skip(f"live uprobes cannot run here: {why}")


@pytest.fixture
def live(live_capable: None, targets: Path) -> Path:
    """For live tests: skips naming the missing capability; yields the targets dir."""
    return targets
