"""kuprobe stands alone: ``pip install .`` into a fresh venv outside the repository, then the
command from another folder, with no checkout on its path (the BPF C and the bundled targets'
C sources are package data)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE_PYTHON = "/usr/bin/python3"  # Debian's, so that the venv sees python3-bpfcc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A venv with kuprobe installed from a copy of the repository (not editable)."""
    tmp = tmp_path_factory.mktemp("installed")
    src = tmp / "src"
    # A copy, so that nothing of the checkout (tests/, .venv) can leak in by path.
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        path = ROOT / name.decode()
        if path.is_file() and not name.startswith(b"tests/"):
            dest = src / name.decode()
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(path.read_bytes())
    venv = tmp / "venv"
    subprocess.run([BASE_PYTHON, "-m", "venv", "--system-site-packages", venv], check=True)
    subprocess.run(
        [venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", str(src)],
        check=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["KUPROBE_TARGET_CACHE"] = str(tmp / "targets")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    yield venv, env | {"PWD": str(elsewhere)}


def _run(installed: tuple[Path, dict[str, str]], *argv: str) -> subprocess.CompletedProcess[str]:
    venv, env = installed
    return subprocess.run(
        [str(venv / "bin" / "kuprobe"), *argv],
        cwd=env["PWD"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_the_installed_package_has_no_checkout_on_its_path(
    installed: tuple[Path, dict[str, str]],
) -> None:
    venv, env = installed
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import kuprobe; print(kuprobe.__file__)"],
        cwd=env["PWD"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith(str(venv)), out
    assert not out.startswith(str(ROOT)), out


@pytest.mark.slow
def test_model_runs_from_another_folder(installed: tuple[Path, dict[str, str]]) -> None:
    done = _run(installed, "model", "bundled:x86_64", "add", "1", "2", "--probe", "u:add arg0 arg1")
    assert done.returncode == 0, done.stderr
    assert "add(1, 2) = 3" in done.stdout
    assert "u:target-static:add arg0=1 arg1=2" in done.stdout


@pytest.mark.slow
@pytest.mark.live
def test_demo_runs_from_another_folder(
    installed: tuple[Path, dict[str, str]], live_capable: None
) -> None:
    done = _run(installed, "demo", "--duration", "2", "--interval", "1")
    assert done.returncode == 0, done.stderr
    assert "u:x86_64/demo:demo_handle" in done.stdout
