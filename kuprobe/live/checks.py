"""What this machine can run live, each missing piece with its fix.

``kuprobe doctor`` shows them; scripts/test.sh asks ``live_uprobes_possible()`` whether live
tests must run here."""

from __future__ import annotations

import os
from dataclasses import dataclass

from kuprobe.arch import host_arch, host_machine
from kuprobe.live import bpf, tracefs
from kuprobe.live.bcc import bcc_version, kernel_build_tree, view_here
from kuprobe.live.events import LIVE_HOSTS
from kuprobe.live.perf_event import pmu_type


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _check(name: str, ok: bool, found: str, missing: str, fix: str) -> Check:
    """``name``: ``found`` if ``ok``, else ``missing`` with its ``fix``."""
    return Check(name, ok, found if ok else missing, fix)


def checks() -> list[Check]:
    root = os.geteuid() == 0
    machine, host = host_machine(), host_arch()
    arch_ok = host in LIVE_HOSTS
    bpf_ok = root and bpf.bpf_map_works(bpf.BPF_MAP_TYPE_ARRAY, 4, 8, 1)
    rb = bpf_ok and bpf.bpf_map_works(bpf.BPF_MAP_TYPE_RINGBUF, 0, 0, 4096)
    tfs = tracefs.tracefs()
    # tracefs is mode 700: a user other than root sees a mount it may not look into
    hidden = tfs is None and any(
        d.is_dir() and not os.access(d, os.X_OK) for d in tracefs.TRACEFS_CANDIDATES
    )
    bcc_ok, ver = bcc_version()
    tree, how = kernel_build_tree()
    view = view_here()  # kuprobe/live/bcc.py: how each compile sees the file system
    return [
        _check("root", root, "euid 0", f"euid {os.geteuid()}",
               "run with sudo: live probes need CAP_BPF and CAP_PERFMON"),
        _check("arch", arch_ok, f"{machine} (pt_regs of {host.name if host else '?'})", machine,
               f"the live backend runs on {' and '.join(a.name for a in LIVE_HOSTS)} kernels; "
               "use the model (kuprobe.model.Machine) elsewhere"),
        _check("BPF", bpf_ok, "bpf(2) creates maps", "bpf(2) refused",
               "run as root on a kernel with CONFIG_BPF_SYSCALL"),
        _check("BPF ring buffer", rb, "available", "missing" if bpf_ok else "not checked: no BPF",
               "kernel 5.8 or newer (kuprobe delivers events through it)"),
        _check("uprobes", pmu_type("uprobe") is not None, "uprobe PMU present",
               "no uprobe PMU", "a kernel with CONFIG_UPROBE_EVENTS"),
        _check("kprobes", pmu_type("kprobe") is not None, "kprobe PMU present",
               "no kprobe PMU (CONFIG_KPROBES off)",
               "use the VM: `kuprobe vm run -- python3 script.py` (a kernel with kprobes)"),
        _check("tracefs", tfs is not None, str(tfs),
               "root only (mode 700)" if hidden else "not mounted",
               "run with sudo" if hidden else
               "mount -t tracefs nodev /sys/kernel/tracing (./run setup does)"),
        _check("BCC importable", bcc_ok, f"bcc {ver}", ver,
               "apt-get install python3-bpfcc; use .venv (made from /usr/bin/python3 "
               "--system-site-packages) — ./run setup does both"),
        _check("kernel headers", tree is not None, f"{tree} ({how})",
               f"none for {os.uname().release}",
               "./run setup (installs linux-headers and lays out a build tree)"),
        _check("BCC compile view", view == "private",
               "private: own cwd; BCC's /proc/kallsyms read answered (faster arming)",
               f"{view}: BCC reads all of /proc/kallsyms on each compile (~0.2 s more arming)",
               "root with CAP_SYS_ADMIN (a mount namespace per compile); only speed depends "
               "on it"),
    ]  # fmt: skip


def live_uprobes_possible() -> tuple[bool, str]:
    """Whether live uprobe tests can run here; if not, which capability is missing."""
    needed = {
        "arch",
        "root",
        "BPF",
        "BPF ring buffer",
        "uprobes",
        "BCC importable",
        "kernel headers",
    }
    missing = [c for c in checks() if c.name in needed and not c.ok]
    if missing:
        return False, "; ".join(f"{c.name}: {c.detail}" for c in missing)
    return True, ""
