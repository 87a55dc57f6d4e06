"""The bundled probe targets: C sources in the package, built on first use into a cache.

They are the demo workload and the cross-check's ``target``, built by ``build.sh`` beside them.

``bundled(arch, name)`` is the path of one built program (``name``: ``demo``, ``target``,
``target-static`` …), built if it is missing or older than its sources.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kuprobe.errors import KuprobeError

SOURCES = Path(__file__).resolve().parent
BUILD_SCRIPT = SOURCES / "build.sh"


class TargetError(KuprobeError, RuntimeError):
    """A bundled probe target could not be built or did not run as expected."""


def cache_dir() -> Path:
    """``$KUPROBE_TARGET_CACHE``, else /var/cache/kuprobe/targets for root, else
    ~/.cache/kuprobe/targets."""
    env = os.environ.get("KUPROBE_TARGET_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/kuprobe/targets")
    return Path.home() / ".cache" / "kuprobe" / "targets"


def bundled(arch: str, name: str, *, out: Path | None = None) -> Path:
    """The built program ``name`` for ``arch`` (build.sh's ``<arch>/<name>``), built on demand.

    Progress (each file built) goes to stderr. Raises ``TargetError`` naming the compiler when
    the arch's cannot be found.
    """
    out = out or cache_dir()
    path = out / arch / name
    env = dict(os.environ, KUPROBE_TARGET_ARCHES=arch, KUPROBE_TARGET_OUT=str(out))
    env.pop("KUPROBE_TARGET_EXTRA", None)
    done = subprocess.run(["bash", str(BUILD_SCRIPT)], env=env, capture_output=True, text=True)
    print(done.stdout + done.stderr, end="", file=sys.stderr)  # what it built, or why not
    if done.returncode != 0:
        raise TargetError(f"{BUILD_SCRIPT} failed for {arch} (exit status {done.returncode})")
    if not path.exists():
        raise TargetError(
            f"{BUILD_SCRIPT} did not build {path} (is the {arch} compiler installed?)"
        )
    return path
