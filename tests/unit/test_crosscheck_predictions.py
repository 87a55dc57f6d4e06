"""The model's predictions each guest's live side is checked against
(tests/vm/test_crosscheck_guest.py) are computed when the suite runs, for the kernel the guest
boots: a new kernel ABI in Debian's archive (bookworm's went from 6.1.0-56 to 6.1.0-57 under
the suite, and the old one left the archive) changes the image and its predictions together,
and nothing checked in has to be regenerated."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kuprobe.cli.vm import predictions_env
from kuprobe.crosscheck.guest import PREDICTIONS_ENV, vm_scenarios
from kuprobe.crosscheck.runs import GUEST_ARCHES
from kuprobe.vm import image as vm_image
from kuprobe.vm.guests import guest

ROOT = Path(__file__).resolve().parents[2]
# A Debian kernel release: upstream version, ABI number, flavour (as `uname -r` shows it).
DEBIAN_RELEASE = re.compile(
    r"\b\d+\.\d+\.\d+-\d+-(?:amd64|arm64|686|686-pae|cloud-amd64|rt-[a-z0-9]+)\b"
)


def fake_apt(monkeypatch: pytest.MonkeyPatch, abi: int) -> None:
    """The host's apt lists as if the archive served kernel ABI ``abi`` of 6.1 (what
    resolve_inputs reads: the metapackage's dependency and the candidate version)."""

    def capture(argv: list[str]) -> str:
        if argv[:2] == ["apt-cache", "depends"]:
            meta = argv[-1]
            suffix = guest("arm64" if meta.endswith(":arm64") else "x86_64").apt_suffix
            flavour = meta.removeprefix("linux-image-").removesuffix(suffix)
            return f"{meta}\n  Depends: linux-image-6.1.0-{abi}-{flavour}{suffix}\n"
        if argv[:2] == ["apt-cache", "policy"]:
            return f"{argv[-1]}:\n  Installed: (none)\n  Candidate: 6.1.{100 + abi}-1\n"
        raise AssertionError(f"unexpected command {argv}")

    monkeypatch.setattr(vm_image, "capture", capture)
    monkeypatch.setattr(vm_image, "require_tool", lambda name: name)


@pytest.mark.parametrize("arch", GUEST_ARCHES)
def test_an_abi_bump_changes_the_image_and_its_predictions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, arch: str
) -> None:
    fake_apt(monkeypatch, 56)
    before = vm_image.resolve_inputs(arch)
    fake_apt(monkeypatch, 57)
    after = vm_image.resolve_inputs(arch)
    flavour = guest(arch).deb_arch
    assert (before.kernel_release, after.kernel_release) == (
        f"6.1.0-56-{flavour}",
        f"6.1.0-57-{flavour}",
    )
    assert before.key != after.key  # a new image, built from the new kernel

    image = vm_image.Image(tmp_path / "image", after.kernel_release, arch=arch)
    env = predictions_env(image, tmp_path)
    predictions = json.loads(Path(env[PREDICTIONS_ENV]).read_text())
    assert predictions["release"] == after.kernel_release
    assert predictions["arch"] == arch
    assert list(predictions["scenarios"]) == vm_scenarios(arch, uprobes_only=True)
    assert len(predictions["scenarios"]) >= 30
    # each scenario observed something: the model ran the programs, it did not just list names
    assert all(
        any(isinstance(v, int) and v for v in obs.values())
        for obs in predictions["scenarios"].values()
    )


def test_nothing_checked_in_names_a_debian_kernel_abi() -> None:
    """What Debian's archive retires (a kernel ABI) is computed when the suite runs, never
    written in kuprobe/ or tests/ (a test of release parsing builds its examples from parts)."""
    tracked = subprocess.run(
        ["git", "ls-files", "kuprobe", "tests"], cwd=ROOT, capture_output=True, text=True
    )
    if tracked.returncode != 0:
        pytest.fail(f"git ls-files failed: {tracked.stderr}")
    found = []
    for name in tracked.stdout.splitlines():
        path = ROOT / name
        if not path.is_file() or path.suffix in (".ko", ".o"):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [
            f"{name}:{n}: {m.group(0)}"
            for n, line in enumerate(text.splitlines(), 1)
            for m in DEBIAN_RELEASE.finditer(line)
        ]
    assert found == []


def test_the_guests_live_side_needs_no_unicorn() -> None:
    """The arm64 guest's Debian unicorn does not import (it wants distutils): the cross-check's
    live side there reads its kernel's rules (kuprobe.model.semantics) without the emulator.
    Before, ``kuprobe.model`` imported Machine, hence Unicorn, for any of its modules."""
    release = os.uname().release
    script = (
        "import sys; sys.modules['unicorn'] = None\n"  # as if it failed to import
        "from kuprobe.crosscheck.guest import model_semantics\n"
        f"print(model_semantics({release!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [release]
