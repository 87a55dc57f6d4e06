"""perf_event_open(2) for kprobe and uprobe PMUs, and the tracefs corner kretprobes need.

Probes attach as perf events of the ``kprobe``/``uprobe`` PMUs (kernel/trace/trace_event_perf.c:
perf_kprobe_init(), perf_uprobe_init()): the kernel removes them when the fd closes, even
after SIGKILL, so nothing is left behind. Only a kretprobe with its own ``maxactive`` needs a
tracefs event (the PMU has no maxactive field); those are named ``kuprobe_<pid>_<n>`` in the
``kuprobe`` group and stale ones are removed at start.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
from pathlib import Path
from typing import Any

from kuprobe.errors import KuprobeValueError

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


# include/uapi/linux/perf_event.h
PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_SET_BPF = 0x40042408

PMU_DIR = Path("/sys/bus/event_source/devices")
TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
TRACEFS_GROUP = "kuprobe"
_EVENT_NAME = re.compile(r"^kuprobe_(\d+)_(\d+)$")


@functools.cache
def _nr(name: str) -> int:
    """The host's number for syscall ``name`` (kuprobe.arch), or ProbeError(EOPNOTSUPP)."""
    from kuprobe.live.events import live_host

    return live_host().syscalls[name]


class PerfEventAttr(ctypes.Structure):
    """``struct perf_event_attr`` up to config2 (PERF_ATTR_SIZE_VER1 = 72 bytes)."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),  # kprobe_func / uprobe_path
        ("config2", ctypes.c_uint64),  # probe_offset / kprobe_addr
    )


BPF_MAP_CREATE = 0
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_RINGBUF = 27  # kernel 5.8


def bpf_map_works(map_type: int, key_size: int, value_size: int, max_entries: int) -> bool:
    """Create (and close) a BPF map: the cheapest proof that bpf(2) and that map type work."""
    attr = (ctypes.c_uint32 * 16)()
    attr[0], attr[1], attr[2], attr[3] = map_type, key_size, value_size, max_entries
    try:
        os.close(_bpf(BPF_MAP_CREATE, attr))
    except OSError:
        return False
    return True


BPF_LINK_CREATE = 28


def pmu_type(name: str) -> int | None:
    """The dynamic PMU type of ``kprobe`` or ``uprobe``; None when the kernel has none."""
    try:
        return int((PMU_DIR / name / "type").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _format_bit(pmu: str, field: str) -> int:
    """``config:N`` from the PMU's format directory: where the kernel wants that flag."""
    text = (PMU_DIR / pmu / "format" / field).read_text().strip()
    m = re.fullmatch(r"config:(\d+)(?:-\d+)?", text)
    if not m:
        raise OSError(errno.EINVAL, f"unexpected {pmu} format for {field}: {text!r}")
    return int(m.group(1))


def perf_event_open(attr: PerfEventAttr, pid: int, cpu: int) -> int:
    fd = _libc.syscall(
        _nr("perf_event_open"), ctypes.byref(attr), pid, cpu, -1, PERF_FLAG_FD_CLOEXEC
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


def ioctl(fd: int, request: int, arg: int = 0) -> None:
    if _libc.ioctl(fd, ctypes.c_ulong(request), ctypes.c_ulong(arg)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _open_probe(
    pmu: str,
    *,
    config1: bytes | None,
    config2: int,
    retprobe: bool,
    extra_config: int,
    pid: int,
) -> int:
    ptype = pmu_type(pmu)
    if ptype is None:
        raise OSError(errno.EOPNOTSUPP, f"the kernel has no {pmu} PMU")
    attr = PerfEventAttr()
    attr.type = ptype
    attr.size = ctypes.sizeof(PerfEventAttr)
    attr.config = extra_config | ((1 << _format_bit(pmu, "retprobe")) if retprobe else 0)
    attr.sample_period = 1
    attr.wakeup_events = 1
    keep = ctypes.create_string_buffer(config1) if config1 is not None else None
    attr.config1 = ctypes.addressof(keep) if keep is not None else 0
    attr.config2 = config2
    # A system-wide probe is opened on cpu 0 with pid -1: the BPF program runs on every CPU.
    return perf_event_open(attr, pid if pid > 0 else -1, -1 if pid > 0 else 0)


def open_uprobe(path: str, offset: int, *, retprobe: bool, pid: int, ref_ctr_offset: int) -> int:
    """A uprobe/uretprobe perf event on (path, file offset)."""
    extra = 0
    if ref_ctr_offset:
        extra = ref_ctr_offset << _format_bit("uprobe", "ref_ctr_offset")
    return _open_probe(
        "uprobe",
        config1=os.fsencode(path),
        config2=offset,
        retprobe=retprobe,
        extra_config=extra,
        pid=pid,
    )


def open_kprobe(symbol: str | None, offset_or_addr: int, *, retprobe: bool) -> int:
    """A kprobe/kretprobe perf event on symbol+offset, or on an address (symbol None)."""
    return _open_probe(
        "kprobe",
        config1=symbol.encode() if symbol is not None else None,
        config2=offset_or_addr,
        retprobe=retprobe,
        extra_config=0,
        pid=-1,
    )


BPF_PERF_EVENT = 41  # include/uapi/linux/bpf.h: enum bpf_attach_type


class _LinkCreatePerfEvent(ctypes.Structure):
    """``union bpf_attr``'s link_create, with its perf_event member (Linux 5.15)."""

    _fields_ = (
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("bpf_cookie", ctypes.c_uint64),
    )


def _bpf(cmd: int, attr: Any) -> int:
    fd = _libc.syscall(_nr("bpf"), cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


def link_perf_event(perf_fd: int, prog_fd: int, cookie: int) -> int:
    """Attach the program to the perf event through a BPF link carrying ``cookie`` (what
    bpf_get_attach_cookie() returns in the program), and enable the event; returns the link.
    Closes ``perf_fd`` on failure."""
    try:
        link = _bpf(
            BPF_LINK_CREATE,
            _LinkCreatePerfEvent(
                prog_fd=prog_fd, target_fd=perf_fd, attach_type=BPF_PERF_EVENT, bpf_cookie=cookie
            ),
        )
    except OSError:
        os.close(perf_fd)
        raise
    try:
        ioctl(perf_fd, PERF_EVENT_IOC_ENABLE)
    except OSError:
        os.close(link)
        os.close(perf_fd)
        raise
    return link


# --- uprobe_multi links (kernel 6.6+) -------------------------------------------------
# A uprobe attached as a BPF link of type uprobe_multi is removed on close like a perf
# event, but without the perf layer's serialisation: closing many links side by side waits
# for about one grace period (kernel/trace/bpf_trace.c: bpf_uprobe_unregister()).

BPF_TRACE_UPROBE_MULTI = 48  # include/uapi/linux/bpf.h: enum bpf_attach_type
BPF_F_UPROBE_MULTI_RETURN = 1


class _LinkCreateUprobeMulti(ctypes.Structure):
    """``union bpf_attr``'s link_create, with its uprobe_multi member."""

    _fields_ = (
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("path", ctypes.c_uint64),
        ("offsets", ctypes.c_uint64),
        ("ref_ctr_offsets", ctypes.c_uint64),
        ("cookies", ctypes.c_uint64),
        ("cnt", ctypes.c_uint32),
        ("multi_flags", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
    )


def open_uprobe_multi(
    prog_fd: int,
    path: str,
    offset: int,
    *,
    retprobe: bool,
    pid: int,
    ref_ctr_offset: int,
    cookie: int = 0,
) -> int:
    """One uprobe (or uretprobe) on (path, file offset) as a uprobe_multi link of count 1,
    carrying ``cookie``."""
    c_path = ctypes.create_string_buffer(os.fsencode(path))
    offsets = (ctypes.c_uint64 * 1)(offset)
    ref_ctrs = (ctypes.c_uint64 * 1)(ref_ctr_offset)
    cookies = (ctypes.c_uint64 * 1)(cookie)
    attr = _LinkCreateUprobeMulti(
        prog_fd=prog_fd,
        attach_type=BPF_TRACE_UPROBE_MULTI,
        path=ctypes.addressof(c_path),
        offsets=ctypes.addressof(offsets),
        ref_ctr_offsets=ctypes.addressof(ref_ctrs) if ref_ctr_offset else 0,
        cookies=ctypes.addressof(cookies),
        cnt=1,
        multi_flags=BPF_F_UPROBE_MULTI_RETURN if retprobe else 0,
        pid=max(pid, 0),
    )
    return _bpf(BPF_LINK_CREATE, attr)


def uprobe_multi_works(prog_fd: int) -> bool:
    """Feature probe (as libbpf's probe_uprobe_multi_link()): a uprobe_multi link on "/"
    fails with EBADF where the kernel has them, with EINVAL or the like where it has not."""
    try:
        os.close(open_uprobe_multi(prog_fd, "/", 0, retprobe=False, pid=0, ref_ctr_offset=0))
    except OSError as e:
        return e.errno == errno.EBADF
    return True


# --- tracefs (kretprobes with maxactive only) -----------------------------------------


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


def open_tracepoint(tp_id: int) -> int:
    attr = PerfEventAttr()
    attr.type = PERF_TYPE_TRACEPOINT
    attr.size = ctypes.sizeof(PerfEventAttr)
    attr.config = tp_id
    attr.sample_period = 1
    attr.wakeup_events = 1
    return perf_event_open(attr, -1, 0)


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


# --- membarrier(2): a full memory barrier on this CPU -----------------------------------
# kernel/sched/membarrier.c: membarrier_private_expedited() runs smp_mb() on entry and on
# exit ("system call entry is not a mb", "exit from system call is not a mb"). Unregistering
# needs exactly that between storing KUPROBE_CFG_OFF and reading the in-flight counts.

MEMBARRIER_CMD_PRIVATE_EXPEDITED = 1 << 3
MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED = 1 << 4


@functools.cache
def _membarrier_registered() -> bool:
    return _membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)


def _membarrier(cmd: int) -> bool:
    return int(_libc.syscall(_nr("membarrier"), cmd, 0, 0)) == 0


def full_barrier() -> bool:
    """A full memory barrier between the caller's earlier stores (a map update) and its later
    loads (a map lookup); False where the kernel has no membarrier(2) (Linux 4.14+)."""
    try:
        return _membarrier_registered() and _membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)
    except KeyError:
        return False
