"""Minimal guests: one kernel of the matrix (``kernels``), booted with nothing but an initramfs.

A kernel that only has to load the test module needs no Debian root and no BCC: its guest is
the kernel qemu boots and an initramfs of the arch's busybox-static and the kernel's modules
that reach the 9p shares (virtio-pci, 9pnet_virtio, 9p and their dependencies, uncompressed on
the host). The initramfs is the root (writable, in memory); its /init mounts the per-boot job
share and hands over to the same stage-2 script as the full guests (``boot``), so ``kuprobe
vm run --kernel SERIES`` keeps the contract of ``kuprobe vm run``.

Built once into ``<cache>/minimal/<key>/`` (kernel, ``initrd.cpio``, ``manifest.json``); the
key hashes the arch, the kernel's release and version, busybox's version, the init script and
``MINIMAL_FORMAT``.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import lzma
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from kuprobe.vm import kernels
from kuprobe.vm._initramfs import JOB_DIR, JOB_TAG, LOAD_MODULES, NINEP_OPTS, Cpio, load_order
from kuprobe.vm.guests import Guest, guest
from kuprobe.vm.host import Stopwatch, VmError, capture, require_tool, run_logged, say
from kuprobe.vm.image import GuestFiles
from kuprobe.vm.kernel import extract_vmlinux, unpack_arm64_image

# Bump when the builder below changes what it puts in a minimal guest.
MINIMAL_FORMAT = 1
# The modules that reach the shares; a built-in one (modules.builtin) is skipped.
MINIMAL_MODULES = ("virtio_pci", "9pnet_virtio", "9p")

MINIMAL_INIT = f"""#!/bin/busybox sh
# kuprobe minimal guest: load the 9p modules, mount the job share, hand over to stage 2.
{LOAD_MODULES}i=0
until mount -t 9p -o {NINEP_OPTS} {JOB_TAG} {JOB_DIR} 2>/dev/null; do
    [ $i -lt 100 ] || fail "mount job share"
    sleep 0.05; i=$((i + 1))
done
exec /bin/sh {JOB_DIR}/stage2.sh
"""


@dataclass(frozen=True)
class MinimalInputs:
    """Everything a minimal guest is made from; its hash is the key."""

    arch: str
    series: str
    kernel_release: str
    kernel_version: str
    busybox_version: str
    init_sha256: str
    minimal_format: int = MINIMAL_FORMAT

    @property
    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def inputs_for(kernel: kernels.Kernel) -> MinimalInputs:
    return MinimalInputs(
        arch=kernel.arch,
        series=kernel.series,
        kernel_release=kernel.release,
        kernel_version=kernel.version,
        busybox_version=kernel.busybox_version,
        init_sha256=hashlib.sha256(MINIMAL_INIT.encode()).hexdigest(),
    )


@dataclass(frozen=True)
class MinimalImage(GuestFiles):
    """A built minimal guest's files; `boot.run_in_guest` boots it as it does an `Image`."""

    series: str = ""

    root = None  # no root disk: the initramfs is the root

    @classmethod
    def load(cls, path: Path) -> MinimalImage:
        manifest = json.loads((path / "manifest.json").read_text())
        inputs = manifest["inputs"]
        return cls(
            path=path,
            kernel_release=str(inputs["kernel_release"]),
            arch=str(inputs["arch"]),
            kernel_name=str(manifest["kernel"]),
            series=str(inputs["series"]),
        )


def cached_minimal(inputs: MinimalInputs, cache: Path) -> MinimalImage | None:
    path = cache / "minimal" / inputs.key
    return MinimalImage.load(path) if (path / "manifest.json").is_file() else None


def ensure_minimal(arch: str, series: str, *, cache: Path, rebuild: bool = False) -> MinimalImage:
    """The minimal guest of `arch` booting kernel `series`, built if the cache lacks it."""
    kernel = kernels.resolve_kernel(guest(arch).arch, series, cache)
    inputs = inputs_for(kernel)
    image = None if rebuild else cached_minimal(inputs, cache)
    if image is not None:
        say(f"{inputs.arch} minimal guest {inputs.key} (kernel {inputs.kernel_release}) cached "
            f"in {image.path}")  # fmt: skip
        return image
    (cache / "minimal").mkdir(parents=True, exist_ok=True)
    with (cache / "minimal" / f".lock-{inputs.key}").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        image = None if rebuild else cached_minimal(inputs, cache)
        if image is None:
            image = _build(kernel, inputs, cache)
    return image


def _modules_root(unpacked: Path, release: str) -> Path:
    """The directory holding lib/modules/<release>: / or /usr (merged-/usr packages)."""
    for base in (unpacked, unpacked / "usr"):
        if (base / "lib" / "modules" / release).is_dir():
            return base
    raise VmError(f"no lib/modules/{release} in the kernel package")


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        done = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=True)
        return done.stdout
    return data


def _kernel_file(g: Guest, unpacked: Path, release: str, out: Path) -> str:
    """The file qemu boots, into `out`; its name."""
    vmlinuz = unpacked / "boot" / f"vmlinuz-{release}"
    config = unpacked / "boot" / f"config-{release}"
    if g.kernel_form == "image":
        unpack_arm64_image(vmlinuz, out / "Image")
        return "Image"
    if g.kernel_form == "vmlinux" and "CONFIG_PVH=y" in config.read_text().splitlines():
        extract_vmlinux(vmlinuz, out / "vmlinux")
        return "vmlinux"
    shutil.copy2(vmlinuz, out / "bzImage")
    return "bzImage"


def build_initramfs(modules_base: Path, release: str, busybox: bytes, out: Path) -> list[str]:
    """The minimal initramfs: busybox, the 9p modules (uncompressed), /init."""
    moddir = modules_base / "lib" / "modules" / release
    order = load_order((moddir / "modules.dep").read_text(), MINIMAL_MODULES)
    archive = Cpio()
    for d in ("bin", "dev", "proc", "sys", "run", JOB_DIR.strip("/"), "tmp", "root", "modules"):
        archive.directory(d)  # JOB_DIR (run/kuprobe) after its parent
    archive.chardev("dev/console", 5, 1)
    archive.file("init", MINIMAL_INIT.encode(), 0o755)
    archive.file("bin/busybox", busybox, 0o755)
    names = []
    for rel in order:
        name = Path(rel).name.split(".ko")[0] + ".ko"
        archive.file(f"modules/{name}", _module_bytes(moddir / rel))
        names.append(name)
    archive.file("modules.order", "".join(f"/modules/{n}\n" for n in names).encode())
    out.write_bytes(archive.finish())
    return names


def _build(kernel: kernels.Kernel, inputs: MinimalInputs, cache: Path) -> MinimalImage:
    g = guest(kernel.arch)
    clock = Stopwatch()
    work = Path(tempfile.mkdtemp(prefix=f"minimal-{inputs.key}-", dir=cache))
    log = work / "build.log"
    say(f"building the {g.arch} minimal guest {inputs.key}: kernel {kernel.release} "
        f"{kernel.version} ({kernel.suite}) (log: {log})")  # fmt: skip
    apt = kernels.apt(cache)
    final = cache / "minimal" / inputs.key
    try:
        out = work / "out"
        out.mkdir()
        image_deb = apt.download(kernel.image_package, kernel.version, g.deb_arch, cache / "debs")
        busybox_deb = apt.download(
            "busybox-static", kernel.busybox_version, g.deb_arch, cache / "debs"
        )
        say(f"[{clock}] unpacking the kernel and busybox")
        unpacked = work / "kernel"
        run_logged(["dpkg-deb", "-x", str(image_deb), str(unpacked)], log=log)
        bb = work / "busybox"
        run_logged(["dpkg-deb", "-x", str(busybox_deb), str(bb)], log=log)
        busybox = next((p for p in (bb / "bin/busybox", bb / "usr/bin/busybox") if p.is_file()),
                       None)  # fmt: skip
        if busybox is None:
            raise VmError(f"no busybox in {busybox_deb.name}")
        base = _modules_root(unpacked, kernel.release)
        run_logged([require_tool("depmod"), "-b", str(base), kernel.release], log=log)
        kernel_name = _kernel_file(g, unpacked, kernel.release, out)
        modules = build_initramfs(base, kernel.release, busybox.read_bytes(), out / "initrd.cpio")
        manifest = {
            "inputs": asdict(inputs),
            "key": inputs.key,
            "suite": kernel.suite,
            "kernel": kernel_name,
            "initramfs_modules": modules,
            "seconds": {"build": round(clock.seconds(), 1)},
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.copy2(log, out / "build.log")
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
    say(f"[{clock}] minimal guest {inputs.key} built in {final} "
        f"({capture(['du', '-sh', str(final)]).split()[0]})")  # fmt: skip
    return MinimalImage.load(final)
