"""House rules that hold for the whole package: one exception base; import and the model work
on a host kuprobe knows no arch of."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import kuprobe
from kuprobe.errors import KuprobeError

# Raised and caught inside the model's emulated trap, never out of it (they stand for the
# kernel's own control flow: a handler abandoned, an instruction restarted, a user fault).
INTERNAL = {"HandlerAbandoned", "Restart", "_UserFault"}


def test_every_exception_kuprobe_defines_derives_from_kuprobe_error() -> None:
    found = []
    for mod in pkgutil.walk_packages(kuprobe.__path__, "kuprobe."):
        if mod.name.endswith("__main__"):
            continue
        module = importlib.import_module(mod.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
                and name not in INTERNAL
            ):
                found.append(obj)
                assert issubclass(obj, KuprobeError), f"{mod.name}.{name}"
    assert len(found) >= 6  # ProbeError, SpecError, ModelError, EmuError, VmError, TargetError


FOREIGN_HOST = r"""
import collections, errno, os, sys
real = os.uname()
Uname = collections.namedtuple("Uname", "sysname nodename release version machine")
os.uname = lambda: Uname(real.sysname, real.nodename, real.release, real.version, "riscv64")

import kuprobe
from kuprobe import ProbeError, Uprobe, UprobeConsumer, register_uprobe
from kuprobe.model import Machine

exe = sys.argv[1]
m = Machine.load(exe)
up = Uprobe(exe, symbol_name="add", consumer=UprobeConsumer())
m.register_uprobe(up)
assert m.call("add", 2, 3) == 5 and up.hits == 1
m.unregister_uprobe(up)
try:
    register_uprobe(Uprobe(exe, symbol_name="add"))
except ProbeError as e:
    assert e.errno == errno.EOPNOTSUPP, e
    print("live:", e.strerror)
else:
    raise AssertionError("a live uprobe registered on an unknown host")
"""


def test_import_and_the_model_on_a_host_kuprobe_knows_no_arch_of(targets: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FOREIGN_HOST, str(targets / "x86_64" / "target-static")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "live: kuprobe's live backend runs on x86_64, arm64 hosts; this is riscv64\n"
    )
