"""One boot of a guest: qemu TCG, no network device, a `timeout` around it, shares over 9p.

The qemu binary, machine and serial console are the image's arch's (``guests.GUESTS``).

The host writes a per-boot job directory (shared as ``/run/kuprobe``) holding the stage-2
script; the initramfs hands over to it. It mounts tracefs, debugfs and bpffs, mounts every
shared directory at its own path, runs the command with its output on the serial console
(streamed here, after a marker line that ends the boot noise), writes the exit status to the
job directory and powers off. Results (e.g. JUnit XML) come back through the job directory.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kuprobe.vm._initramfs import JOB_DIR, JOB_TAG, NINEP_OPTS
from kuprobe.vm.host import Stopwatch, VmError, require_tool, say
from kuprobe.vm.image import PROJECT_ROOT, Image
from kuprobe.vm.minimal import MinimalImage

# A full guest (Debian root on a disk) or a minimal one (the initramfs is its root).
Bootable = Image | MinimalImage

MARKER = "@@kuprobe-vm: command starts"
END_MARKER = "@@kuprobe-vm: command ended"
KERNEL_CMDLINE = "console={console} quiet loglevel=1 nokaslr panic=-1 rdinit=/init"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_NO_STATUS = 125  # the guest never reported the command's status


@dataclass
class RunResult:
    """What a command in the guest did."""

    status: int
    output: str
    boot_log: str = ""
    seconds: float = 0.0
    outputs: dict[str, Path] = field(default_factory=dict)


def stage2_script(
    command: Sequence[str],
    *,
    shares: Sequence[Path],
    cwd: Path,
    env: Mapping[str, str],
) -> str:
    """The guest's PID 1 after the initramfs: set up, run `command`, report, power off."""
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        "# Written by kuprobe vm for one boot; runs as PID 1 in the guest.",
        f"export PATH={GUEST_PATH} HOME=/root LANG=C.UTF-8 TERM=dumb",
        f"exec 3>&2 2>>{JOB_DIR}/setup-errors",  # set-up failures are reported by the host
        "set -x",
        "busybox mount -t tracefs tracefs /sys/kernel/tracing",
        "busybox mount -t debugfs debugfs /sys/kernel/debug",
        "busybox mount -t bpf bpf /sys/fs/bpf",
        "mkdir -p /dev/pts /dev/shm && busybox mount -t devpts devpts /dev/pts",
        "busybox mount -t tmpfs -o mode=1777 tmpfs /dev/shm",
        "busybox mount -t tmpfs -o mode=1777 tmpfs /tmp",
        "ip link set lo up",
        "hostname kuprobe-vm",
        "dmesg -n 1",
    ]
    for i, path in enumerate(shares):
        lines.append(f"mkdir -p {q(str(path))}")
        lines.append(f"busybox mount -t 9p -o {NINEP_OPTS},cache=loose share{i} {q(str(path))}")
    lines += ["set +x", "exec 2>&3 3>&-"]
    lines += [f"export {k}={q(v)}" for k, v in env.items()]
    lines += [
        f"cd {q(str(cwd))}",
        f"echo {q(MARKER)}",
        f"{shlex.join(command)} </dev/null",
        "status=$?",
        f"echo; echo {q(END_MARKER)}",
        f"echo $status >{JOB_DIR}/status",
        "sync",
        "echo o >/proc/sysrq-trigger",
        "sleep 10",
    ]
    return "\n".join(lines) + "\n"


def qemu_argv(image: Bootable, job: Path, shares: Sequence[Path], timeout: float) -> list[str]:
    """`timeout` + qemu: the image's kernel, initramfs and read-only root (a full guest's),
    no network."""
    g = image.guest
    argv = [
        require_tool("timeout"), "--kill-after=10", f"{int(timeout)}",
        require_tool(g.qemu), "-nodefaults", "-no-user-config", *g.machine_args,
        "-display", "none", "-serial", "stdio", "-nic", "none", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", KERNEL_CMDLINE.format(console=g.console),
    ]  # fmt: skip
    if image.root is not None:
        argv += ["-drive", f"file={image.root},if=virtio,format=raw,readonly=on"]
    argv += ["-virtfs", f"local,path={job},mount_tag={JOB_TAG},security_model=none"]
    for i, path in enumerate(shares):
        argv += ["-virtfs", f"local,path={path},mount_tag=share{i},security_model=none"]
    return argv


def _pick_cwd(shares: Sequence[Path], cwd: Path | None) -> Path:
    here = (cwd or Path.cwd()).resolve()
    if any(here == s or s in here.parents for s in shares):
        return here
    return shares[0] if shares else Path("/")


def run_in_guest(
    image: Bootable,
    command: Sequence[str],
    *,
    shares: Sequence[Path] = (),
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    outputs: Mapping[str, Path] | None = None,
    echo: bool = True,
    verbose: bool = False,
) -> RunResult:
    """Boot `image`, run `command` in it, power off; its output is echoed as it comes.

    The project is always shared (so ``import kuprobe`` works: it is on PYTHONPATH); every
    directory in `shares` is too, each at its own path. `outputs` maps file names the command
    writes to ``/run/kuprobe/`` in the guest to host paths they are copied to.
    """
    all_shares = [PROJECT_ROOT]
    for path in shares:
        resolved = Path(path).resolve()
        if not resolved.is_dir():
            raise VmError(f"--share {path}: not a directory")
        if resolved not in all_shares:
            all_shares.append(resolved)
    guest_env = {
        "PYTHONPATH": str(PROJECT_ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "KUPROBE_IN_VM": "1",
        **(env or {}),
    }
    job = Path(tempfile.mkdtemp(prefix="kuprobe-vm-job-"))
    try:
        script = stage2_script(
            command, shares=all_shares, cwd=_pick_cwd(all_shares, cwd), env=guest_env
        )
        (job / "stage2.sh").write_text(script)
        argv = qemu_argv(image, job, all_shares, timeout)
        return _boot(argv, job, timeout, outputs or {}, echo=echo, verbose=verbose, arch=image.arch)
    finally:
        shutil.rmtree(job, ignore_errors=True)


def _boot(
    argv: list[str],
    job: Path,
    timeout: float,
    outputs: Mapping[str, Path],
    *,
    echo: bool,
    verbose: bool,
    arch: str,
) -> RunResult:
    clock = Stopwatch()
    qemu = Path(argv[3]).name
    say(f"booting the {arch} guest (qemu TCG, timeout {int(timeout)} s)")
    if verbose:
        say("qemu: " + shlex.join(argv))
    boot_lines: list[str] = []
    out_lines: list[str] = []
    started = ended = False
    held: list[str] = []
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "LC_ALL": "C"},
    )
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "")
        if ended or line.startswith(f"{qemu}: terminating on signal"):
            boot_lines.append(line)
        elif started and line.startswith(END_MARKER):
            ended = True
            if out_lines and out_lines[-1] == "\n":  # the newline echoed before the marker
                out_lines.pop()
            if echo:
                sys.stdout.write("".join(held[:-1]))
                sys.stdout.flush()
        elif started:
            out_lines.append(line)
            # A blank line is held back until the next: it may be the one before END_MARKER.
            held.append(line)
            if echo and line != "\n":
                sys.stdout.write("".join(held))
                sys.stdout.flush()
            if line != "\n":
                held.clear()
        elif line.startswith(MARKER):
            started = True
            say(f"[{clock}] guest up; running the command")
        else:
            boot_lines.append(line)
            if verbose:
                sys.stderr.write(line)
    code = proc.wait()
    seconds = float(str(clock).split()[0])
    status_file = job / "status"
    setup_errors = job / "setup-errors"
    if setup_errors.is_file():
        failed = [ln for ln in setup_errors.read_text().splitlines() if not ln.startswith("+ ")]
        if failed:
            say("guest set-up errors:\n" + "\n".join(failed))
    boot_log = "".join(boot_lines)
    if status_file.is_file() and status_file.read_text().strip():
        status = int(status_file.read_text().strip())
        say(f"[{clock}] guest powered off; command exit status {status}")
    else:
        status = EXIT_TIMEOUT if code == EXIT_TIMEOUT else EXIT_NO_STATUS
        why = f"timed out after {int(timeout)} s" if code == EXIT_TIMEOUT else "ended"
        say(f"[{clock}] the VM {why} before the command reported a status (qemu: {code})")
        if not started and not verbose:
            tail = "".join(boot_lines[-30:]) or "(no console output)"
            say("last console lines before the command:\n" + tail)
    copied: dict[str, Path] = {}
    for name, dest in outputs.items():
        src = job / name
        if src.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            copied[name] = dest
    return RunResult(status, "".join(out_lines), boot_log, seconds, copied)
