"""The guest's tiny initramfs: static busybox, the modules that reach the root, one script.

Debian builds virtio, ext4, overlay and 9p as modules, so the initramfs loads them (in the
dependency order depmod wrote to modules.dep), mounts the read-only ext4 root under a tmpfs
overlay (the guest may write anywhere; nothing reaches the image), mounts the per-boot job
share, and hands over to the job's stage-2 script, which the host writes for every boot.
"""

from __future__ import annotations

import stat
from pathlib import Path

# Loaded in this order with their dependencies first; a built-in one is skipped.
WANTED_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
    "overlay",
    "9pnet_virtio",
    "9p",
)

# The 9p mount tag of the per-boot job directory (stage-2 script in, status and results out).
JOB_TAG = "kuprobe_job"
JOB_DIR = "/run/kuprobe"
NINEP_OPTS = "trans=virtio,version=9p2000.L,msize=262144"

# The start of every guest's /init: busybox's applets, /proc, /sys, /dev, `fail`, and the
# modules of /modules.order loaded in order (also the minimal guests': minimal.MINIMAL_INIT).
LOAD_MODULES = """/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "kuprobe-init: $*"; echo o >/proc/sysrq-trigger; sleep 5; }
for m in $(cat /modules.order); do
    insmod "$m" || fail "insmod $m"
done
"""

INIT_SCRIPT = f"""#!/bin/busybox sh
# kuprobe VM initramfs: load the root's modules, mount root (ro ext4 + tmpfs overlay), hand over.
{LOAD_MODULES}i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
mkdir -p /lower /upper /newroot
mount -t ext4 -o ro /dev/vda /lower || fail "mount root"
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir -p /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot \\
    || fail "mount overlay"
mkdir -p /newroot{JOB_DIR}
mount -t 9p -o {NINEP_OPTS} {JOB_TAG} /newroot{JOB_DIR} || fail "mount job share"
for d in proc sys dev; do mount --move /$d /newroot/$d; done
exec switch_root /newroot /bin/sh {JOB_DIR}/stage2.sh
"""


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep -> {name: (path, [dependency names])}; names with '_' as modprobe does."""

    def name_of(path: str) -> str:
        return Path(path).name.split(".ko")[0].replace("-", "_")

    table: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, deps = line.partition(":")
        table[name_of(path)] = (path, [name_of(d) for d in deps.split()])
    return table


def load_order(modules_dep: str, wanted: tuple[str, ...] = WANTED_MODULES) -> list[str]:
    """Relative paths of the wanted modules and their dependencies, each after its own."""
    table = parse_modules_dep(modules_dep)
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in table:  # absent: built in (modules.builtin)
            return
        seen.add(name)
        path, deps = table[name]
        for dep in deps:
            visit(dep)
        order.append(path)

    for name in wanted:
        visit(name)
    return order


class Cpio:
    """A newc ("070701") archive, the format the kernel unpacks as an initramfs."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ino = 1

    def _entry(self, name: str, mode: int, body: bytes, rdev: tuple[int, int] = (0, 0)) -> None:
        fields = [self.ino, mode, 0, 0, 1, 0, len(body), 0, 0, rdev[0], rdev[1]]
        self.ino += 1
        encoded = name.encode() + b"\0"
        header = "070701" + "".join(f"{v:08x}" for v in fields)
        header += f"{len(encoded):08x}{0:08x}"
        self.data += header.encode() + encoded
        self.data += b"\0" * (-len(self.data) % 4)
        self.data += body
        self.data += b"\0" * (-len(self.data) % 4)

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, b"")

    def file(self, name: str, body: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, body)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, b"", (major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"")
        self.data += b"\0" * (-len(self.data) % 512)
        return bytes(self.data)


def build_initramfs(root: Path, kver: str, out: Path) -> list[str]:
    """Write the initramfs for the guest root `root` (kernel `kver`); returns the modules."""
    moddir = f"lib/modules/{kver}"
    order = load_order((root / "usr" / moddir / "modules.dep").read_text())
    archive = Cpio()
    made: set[str] = set()

    def parents(path: str) -> None:
        parts = Path(path).parts[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in made:
                made.add(d)
                archive.directory(d)

    for d in ("bin", "dev", "proc", "sys", "run"):
        parents(d + "/x")
    archive.chardev("dev/console", 5, 1)
    archive.file("init", INIT_SCRIPT.encode(), 0o755)
    archive.file("bin/busybox", (root / "usr/bin/busybox").read_bytes(), 0o755)
    paths = [f"/{moddir}/{rel}" for rel in order]
    for rel, path in zip(order, paths, strict=True):
        parents(path.lstrip("/"))
        archive.file(path.lstrip("/"), (root / "usr" / moddir / rel).read_bytes())
    archive.file("modules.order", ("\n".join(paths) + "\n").encode())
    out.write_bytes(archive.finish())
    return [Path(p).name for p in paths]
