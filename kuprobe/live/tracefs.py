"""kuprobe's kprobe events in tracefs: kretprobes with their own maxactive, and kprobe_profile.

Only a kretprobe with its own ``maxactive`` needs a tracefs event (kernel/trace/trace_kprobe.c;
the kprobe PMU has no maxactive field); those are named ``kuprobe_<pid>_<n>`` in the
``kuprobe`` group, opened as tracepoint perf events (kuprobe/live/perf_event.py), and stale
ones are removed at start, or by a reaper when their process dies.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from kuprobe.errors import KuprobeValueError

TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
TRACEFS_GROUP = "kuprobe"
_EVENT_NAME = re.compile(r"^kuprobe_(\d+)_(\d+)$")


def tracefs() -> Path | None:
    """The tracefs mount with the probe event files; None where none is mounted or this user
    may not look into it (mode 700: root only)."""
    for p in TRACEFS_CANDIDATES:
        try:
            if (p / "kprobe_events").exists() or (p / "uprobe_events").exists():
                return p
        except PermissionError:
            continue
    return None


def _write_events(line: str) -> None:
    root = tracefs()
    if root is None:
        raise OSError(
            errno.ENOENT, "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
        )
    fd = os.open(root / "kprobe_events", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


def create_kretprobe_event(name: str, target: str, maxactive: int) -> int:
    """Create ``r<maxactive>:kuprobe/<name> <target>``; returns its tracepoint id."""
    if not _EVENT_NAME.match(name):
        raise KuprobeValueError(f"bad event name {name!r}")
    _write_events(f"r{maxactive}:{TRACEFS_GROUP}/{name} {target}")
    root = tracefs()
    assert root is not None
    return int((root / "events" / TRACEFS_GROUP / name / "id").read_text())


def remove_kprobe_event(name: str) -> None:
    _write_events(f"-:{TRACEFS_GROUP}/{name}")


def kprobe_profile() -> dict[str, tuple[int, int]]:
    """``kprobe_profile``: event name -> (hits, nmissed)."""
    root = tracefs()
    if root is None or not (root / "kprobe_profile").exists():
        return {}
    out: dict[str, tuple[int, int]] = {}
    for line in (root / "kprobe_profile").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out[parts[0]] = (int(parts[1]), int(parts[2]))
    return out


# Run as `python -c REAPER PID` in its own session: waits for PID to exit (pidfd), then
# removes the kuprobe_<PID>_* tracefs events it left (none, when it unregistered normally).
REAPER = """
import os, re, select, sys
pid = int(sys.argv[1])
try:
    fd = os.pidfd_open(pid)
    select.select([fd], [], [])
except ProcessLookupError:
    pass
for root in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
    path = root + "/kprobe_events"
    if not os.path.exists(path):
        continue
    with open(path) as f:
        names = re.findall(r"^[pr]\\d*:kuprobe/(kuprobe_%d_\\d+) " % pid, f.read(), re.M)
    for name in names:  # os.write: Python's append mode seeks, which tracefs refuses
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"-:kuprobe/%s\\n" % name.encode())
        except OSError as e:
            print("kuprobe reaper: could not remove kuprobe/%s: %s" % (name, e), file=sys.stderr)
        finally:
            os.close(fd)
    break
"""


def remove_stale_events() -> list[str]:
    """Remove ``kuprobe/kuprobe_<pid>_<n>`` events whose creating process is gone."""
    root = tracefs()
    removed: list[str] = []
    if root is None or not (root / "kprobe_events").exists():
        return removed
    for line in (root / "kprobe_events").read_text().splitlines():
        m = re.match(rf"^[pr]\d*:{TRACEFS_GROUP}/(\S+)", line)
        if not m:
            continue
        name = m.group(1)
        em = _EVENT_NAME.match(name)
        if em and not Path(f"/proc/{em.group(1)}").exists():
            try:
                remove_kprobe_event(name)
                removed.append(name)
            except OSError:
                pass  # busy: still open somewhere; left for the next start
    return removed
