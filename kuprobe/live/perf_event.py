"""perf_event_open(2): the perf events of the kprobe and uprobe PMUs, and of tracepoints.

Probes attach as perf events of the ``kprobe``/``uprobe`` PMUs (kernel/trace/trace_event_perf.c:
perf_kprobe_init(), perf_uprobe_init()): the kernel removes them when the fd closes, even
after SIGKILL, so nothing is left behind. A kretprobe with its own ``maxactive`` is a
tracepoint perf event on a tracefs event instead (kuprobe/live/tracefs.py): the PMU has no
maxactive field.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from pathlib import Path

from kuprobe.live.syscall import libc, syscall

# include/uapi/linux/perf_event.h
PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_SET_BPF = 0x40042408

PMU_DIR = Path("/sys/bus/event_source/devices")


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
    return syscall("perf_event_open", ctypes.byref(attr), pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)


def ioctl(fd: int, request: int, arg: int = 0) -> None:
    if libc.ioctl(fd, ctypes.c_ulong(request), ctypes.c_ulong(arg)) < 0:
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


def open_tracepoint(tp_id: int) -> int:
    """A perf event on the tracepoint (a tracefs event) with id ``tp_id``."""
    attr = PerfEventAttr()
    attr.type = PERF_TYPE_TRACEPOINT
    attr.size = ctypes.sizeof(PerfEventAttr)
    attr.config = tp_id
    attr.sample_period = 1
    attr.wakeup_events = 1
    return perf_event_open(attr, -1, 0)
