"""``kuprobe doctor``: what this machine can run, each missing piece with its fix."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from kuprobe.live import perf
from kuprobe.live._bcc import kernel_build_tree
from kuprobe.live.events import HOST_LAYOUTS


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _bcc_importable() -> tuple[bool, str]:
    try:
        import bcc  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        return False, str(e)
    return True, getattr(bcc, "__version__", "?")


def checks() -> list[Check]:
    root = os.geteuid() == 0
    out = [
        Check(
            "root",
            root,
            "euid 0" if root else f"euid {os.geteuid()}",
            "run with sudo: live probes need CAP_BPF and CAP_PERFMON",
        ),
    ]
    machine = os.uname().machine
    arch_ok = machine in HOST_LAYOUTS
    out.append(
        Check(
            "arch",
            arch_ok,
            f"{machine} (pt_regs of {HOST_LAYOUTS[machine].arch})" if arch_ok else machine,
            f"the live backend runs on {' and '.join(HOST_LAYOUTS)} kernels; "
            "use the model (kuprobe.model.Machine) elsewhere",
        )
    )
    bpf_ok = root and perf.bpf_map_works(perf.BPF_MAP_TYPE_ARRAY, 4, 8, 1)
    out.append(
        Check(
            "BPF",
            bpf_ok,
            "bpf(2) creates maps" if bpf_ok else "bpf(2) refused",
            "run as root on a kernel with CONFIG_BPF_SYSCALL",
        )
    )
    rb = bpf_ok and perf.bpf_map_works(perf.BPF_MAP_TYPE_RINGBUF, 0, 0, 4096)
    out.append(
        Check(
            "BPF ring buffer",
            rb,
            "available" if rb else "missing",
            "kernel 5.8 or newer (kuprobe delivers events through it)",
        )
    )
    up = perf.pmu_type("uprobe") is not None
    out.append(
        Check(
            "uprobes",
            up,
            "uprobe PMU present" if up else "no uprobe PMU",
            "a kernel with CONFIG_UPROBE_EVENTS",
        )
    )
    kp = perf.pmu_type("kprobe") is not None
    out.append(
        Check(
            "kprobes",
            kp,
            "kprobe PMU present" if kp else "no kprobe PMU (CONFIG_KPROBES off)",
            "use the VM: `kuprobe vm run -- python3 script.py` (a kernel with kprobes)",
        )
    )
    tfs = perf.tracefs()
    out.append(
        Check(
            "tracefs",
            tfs is not None,
            str(tfs) if tfs else "not mounted",
            "mount -t tracefs nodev /sys/kernel/tracing (./run setup does)",
        )
    )
    ok, ver = _bcc_importable()
    out.append(
        Check(
            "BCC importable",
            ok,
            f"bcc {ver}" if ok else ver,
            "apt-get install python3-bpfcc; use .venv (made from /usr/bin/python3 "
            "--system-site-packages) — ./run setup does both",
        )
    )
    tree, how = kernel_build_tree()
    out.append(
        Check(
            "kernel headers",
            tree is not None,
            f"{tree} ({how})" if tree else f"none for {os.uname().release}",
            "./run setup (installs linux-headers and lays out a build tree)",
        )
    )
    return out


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


def live_kprobes_possible() -> tuple[bool, str]:
    ok, why = live_uprobes_possible()
    if perf.pmu_type("kprobe") is None:
        return False, (why + "; " if why else "") + "kprobes: this kernel has no kprobe PMU"
    return ok, why


def run(args: Any) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"kuprobe doctor — {os.uname().release}", show_lines=False)
    table.add_column("check")
    table.add_column("")
    table.add_column("found")
    table.add_column("fix")
    for c in checks():
        table.add_row(
            c.name, "[green]ok[/]" if c.ok else "[red]no[/]", c.detail, "" if c.ok else c.fix
        )
    Console().print(table)
    live, _ = live_uprobes_possible()
    return 0 if live else 1


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "doctor",
        help="check what this machine can run (root, BPF, kprobes, uprobes, BCC, headers)",
        description="Check each thing live probes need and say how to fix what is missing. "
        "Exit status 0 when live uprobes can run here.\n\nexample:\n  sudo kuprobe doctor",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=run)
