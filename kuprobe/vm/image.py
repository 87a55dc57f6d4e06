"""The guest image: resolved from its inputs, built once, cached under a key of those inputs.

An image is three files in ``<cache>/images/<key>/``: the kernel (``vmlinux`` for x86_64,
uncompressed, booted through PVH; ``Image`` for arm64), ``initrd.cpio`` (see ``_initramfs``)
and ``root.ext4`` (a Debian 12 root made by mmdebstrap with the packages
``vagrant/provision.sh`` names, the kernel's modules and headers, configured by that same
script). The key hashes the guest arch, the kernel package and version, the apt sources, the
provisioning script, the initramfs script and ``IMAGE_FORMAT``: change any and the next
``kuprobe vm build`` makes a new image.

A foreign (arm64) root is built the same way on the x86_64 host: mmdebstrap runs its
maintainer scripts through qemu-user (binfmt_misc, scripts/setup-vm.sh). The kernel package
is never installed by apt, only unpacked (``dpkg-deb -x``): so no initramfs-tools, whose
``mkinitramfs`` under user-mode emulation cost minutes, and no boot loader hooks.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from kuprobe.vm import _initramfs
from kuprobe.vm.guests import DEFAULT_ARCH, Guest, guest
from kuprobe.vm.host import Stopwatch, VmError, capture, require_tool, run_logged, say
from kuprobe.vm.kernel import extract_vmlinux, unpack_arm64_image

# Bump when the builder below changes what it puts in an image.
IMAGE_FORMAT = 1
SUITE = "bookworm"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROVISION = PROJECT_ROOT / "vagrant" / "provision.sh"
SOURCES_FILES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
# Left out of the guest root: documentation and translations (smaller image, faster mke2fs).
DPKG_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
)


def cache_dir() -> Path:
    """``$KUPROBE_VM_CACHE``, else /var/cache/kuprobe/vm for root, else ~/.cache/kuprobe/vm."""
    env = os.environ.get("KUPROBE_VM_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/kuprobe/vm")
    return Path.home() / ".cache" / "kuprobe" / "vm"


@dataclass(frozen=True)
class ImageInputs:
    """Everything an image is made from; its hash is the image's key."""

    kernel_release: str  # uname -r in the guest, from the apt lists (its ABI moves)
    kernel_version: str  # the Debian package version of that kernel
    suite: str
    sources: str  # the apt sources the guest is built from
    provision_sha256: str
    init_sha256: str
    image_format: int = IMAGE_FORMAT
    arch: str = DEFAULT_ARCH

    @property
    def key(self) -> str:
        fields = asdict(self)
        if self.arch == DEFAULT_ARCH:  # x86_64 images keep the keys they had before arches
            del fields["arch"]
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def kernel_package(self) -> str:
        return f"linux-image-{self.kernel_release}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def host_sources() -> Path:
    """The host's apt sources file (the guests' roots and the kernel matrix start from it)."""
    for path in SOURCES_FILES:
        if path.is_file() and path.read_text().strip():
            return path
    raise VmError("no Debian apt sources on this host (/etc/apt/sources.list.d/debian.sources)")


def resolve_inputs(arch: str = DEFAULT_ARCH) -> ImageInputs:
    """The inputs of the image to use now, from the host's apt lists (no network)."""
    g = guest(arch)
    if not g.full:
        raise VmError(f"no full {g.arch} guest, only minimal ones: pick a kernel (--kernel)")
    require_tool("apt-cache")
    meta = g.kernel_meta + g.apt_suffix
    try:
        depends = capture(["apt-cache", "depends", "--important", meta])
    except VmError:
        depends = ""
    releases = [
        line.split("linux-image-", 1)[1].strip().removesuffix(g.apt_suffix)
        for line in depends.splitlines()
        if line.strip().startswith("Depends: linux-image-")
    ]
    if not releases:
        raise VmError(
            f"the apt lists name no kernel for {meta}: run `sh scripts/setup-vm.sh` (it adds "
            "the arm64 architecture to apt and runs `apt-get update`)"
        )
    release = releases[0]
    policy = capture(["apt-cache", "policy", f"linux-image-{release}{g.apt_suffix}"])
    version = next(
        (
            line.split(":", 1)[1].strip()
            for line in policy.splitlines()
            if line.strip().startswith("Candidate:")
        ),
        "(none)",
    )
    if version == "(none)":
        raise VmError(f"linux-image-{release} has no installable version: run `apt-get update`")
    return ImageInputs(
        kernel_release=release,
        kernel_version=version,
        suite=SUITE,
        sources=host_sources().read_text(),
        provision_sha256=_sha256(PROVISION.read_bytes()),
        init_sha256=_sha256(_initramfs.INIT_SCRIPT.encode()),
        arch=g.arch,
    )


@dataclass(frozen=True)
class GuestFiles:
    """What qemu boots of a built guest, full (`Image`) or minimal (`minimal.MinimalImage`):
    its kernel and initramfs."""

    path: Path
    kernel_release: str
    arch: str = DEFAULT_ARCH
    kernel_name: str = "vmlinux"

    @property
    def guest(self) -> Guest:
        return guest(self.arch)

    @property
    def kernel(self) -> Path:
        """The file qemu boots (-kernel)."""
        return self.path / self.kernel_name

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.cpio"


@dataclass(frozen=True)
class Image(GuestFiles):
    """A built image's files: also its root file system."""

    @property
    def root(self) -> Path:
        return self.path / "root.ext4"

    @classmethod
    def load(cls, path: Path) -> Image:
        manifest = json.loads((path / "manifest.json").read_text())
        return cls(
            path=path,
            kernel_release=str(manifest["inputs"]["kernel_release"]),
            arch=str(manifest["inputs"].get("arch", DEFAULT_ARCH)),
            kernel_name=str(manifest.get("kernel", "vmlinux")),
        )


def cached_image(inputs: ImageInputs, cache: Path | None = None) -> Image | None:
    """The built image for `inputs`, if the cache has it."""
    path = (cache or cache_dir()) / "images" / inputs.key
    return Image.load(path) if (path / "manifest.json").is_file() else None


def newest_image(cache: Path | None = None, arch: str = DEFAULT_ARCH) -> Image | None:
    """The most recently built image of `arch`, whatever its other inputs (when they cannot
    be resolved)."""
    images = (cache or cache_dir()) / "images"
    built = sorted(images.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    of_arch = [Image.load(p.parent) for p in built]
    of_arch = [image for image in of_arch if image.arch == guest(arch).arch]
    return of_arch[-1] if of_arch else None


def ensure_image(
    *, rebuild: bool = False, cache: Path | None = None, arch: str = DEFAULT_ARCH
) -> Image:
    """The image of `arch` for the current inputs, building it if the cache lacks it."""
    cache = cache or cache_dir()
    try:
        inputs = resolve_inputs(arch)
    except VmError as exc:
        fallback = None if rebuild else newest_image(cache, arch)
        if fallback is None:
            raise
        say(f"cannot resolve the image inputs ({exc}); using the newest image {fallback.path}")
        return fallback
    image = None if rebuild else cached_image(inputs, cache)
    if image is not None:
        say(f"{inputs.arch} image {inputs.key} (kernel {inputs.kernel_release}) cached in "
            f"{image.path}")  # fmt: skip
        return image
    cache.mkdir(parents=True, exist_ok=True)
    # One lock per arch: an arm64 build (minutes) does not hold up an x86_64 one.
    lock_path = cache / (".lock" if inputs.arch == DEFAULT_ARCH else f".lock-{inputs.arch}")
    with lock_path.open("w") as lock:
        say(f"waiting for the build lock {lock_path}")
        fcntl.flock(lock, fcntl.LOCK_EX)
        image = None if rebuild else cached_image(inputs, cache)
        if image is None:  # nobody built it while we waited
            image = _build(inputs, cache)
    return image


def _download_deb(package: str, version: str, deb_arch: str, cache: Path, log: Path) -> Path:
    """``package`` (of ``deb_arch``: the host's, a foreign one, or all) at ``version``,
    fetched once into ``<cache>/debs``."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = debs / f"{package}_{version}_{deb_arch}.deb".replace(":", "%3a")
    if not deb.is_file():
        say(f"downloading {package} {version} ({deb_arch})")
        suffix = f":{deb_arch}" if deb_arch not in ("amd64", "all") else ""
        pkg = f"{package}{suffix}={version}"
        run_logged(["sh", "-c", f'cd "{debs}" && apt-get download -q "{pkg}"'], log=log)
    if not deb.is_file():
        raise VmError(f"apt-get download did not produce {deb}")
    return deb


def _download_kernel(inputs: ImageInputs, cache: Path, log: Path) -> Path:
    g = guest(inputs.arch)
    return _download_deb(inputs.kernel_package, inputs.kernel_version, g.deb_arch, cache, log)


def _headers_package(kver: str) -> str:
    return f"linux-headers-{kver}"


def _merge_into_root(unpacked: Path, root: Path) -> None:
    """Copy a `dpkg-deb -x` tree into a merged-/usr root: /lib, /bin, /sbin go under /usr
    (copying them as they are would replace the root's directory symlinks)."""
    for top in unpacked.iterdir():
        dest = root / "usr" / top.name if top.name in ("lib", "bin", "sbin") else root / top.name
        shutil.copytree(top, dest, symlinks=True, dirs_exist_ok=True)


def _add_headers(inputs: ImageInputs, root: Path, work: Path, cache: Path, log: Path) -> None:
    """The kernel's headers (BCC's build tree), unpacked on the host for a foreign guest.

    Installing linux-headers-* with apt pulls gcc-12, binutils and linux-kbuild (BCC needs
    none: it compiles with libclang), ~40 MB of packages whose unpacking and maintainer
    scripts run under qemu-user; their files are what BCC reads, so they are laid out here.
    """
    g = guest(inputs.arch)
    arch_pkg = _headers_package(inputs.kernel_release)
    show = capture(["apt-cache", "show", f"{arch_pkg}{g.apt_suffix}={inputs.kernel_version}"])
    common = sorted(set(re.findall(r"\b(linux-headers-[0-9][^\s,]*-common)\b", show)))
    if len(common) != 1:
        raise VmError(f"{arch_pkg} names no single -common headers package: {common}")
    unpacked = work / "headers"
    for name, deb_arch in ((arch_pkg, g.deb_arch), (common[0], "all")):
        deb = _download_deb(name, inputs.kernel_version, deb_arch, cache, log)
        run_logged(["dpkg-deb", "-x", str(deb), str(unpacked)], log=log)
    _merge_into_root(unpacked, root)


def _download_wheels(g: Guest, dest: Path, log: Path) -> None:
    """pip wheels for the guest's Python 3.11 and arch, fetched on the host so the guest root
    needs no network of its own."""
    reqs = capture(["sh", str(PROVISION), "pip-requirements"]).split()
    argv = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest)]
    argv += ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
    for platform in g.wheel_platforms:
        argv += ["--platform", platform]
    run_logged([*argv, *reqs], log=log)


# A foreign root's Python byte-code is compiled on the host, whose Debian python3 is the
# guest's (3.11: the same .pyc magic), instead of by each package's postinst (py3compile)
# under qemu-user; the diversion makes the postinsts skip it (`command -v py3compile`).
PY3COMPILE = "/usr/bin/py3compile"
PY3COMPILE_DIVERTED = "/usr/bin/py3compile.kuprobe"
GUEST_PYTHON = "3.11"
PYTHON_DIRS = ("usr/lib/python3/dist-packages", f"usr/lib/python{GUEST_PYTHON}",
               f"usr/local/lib/python{GUEST_PYTHON}/dist-packages")  # fmt: skip
# Installed by apt only where the maintainer scripts run natively: in a foreign root, the
# builder installs the pip requirements from the host (pip --target) and lays out the
# headers itself, so neither pip (with setuptools, wheel, ca-certificates ...) nor
# linux-headers' gcc-12 and binutils are unpacked and configured under qemu-user.
NATIVE_ONLY = ("python3-pip",)


def _mmdebstrap(inputs: ImageInputs, root: Path, work: Path, log: Path) -> None:
    require_tool("mmdebstrap")
    g = guest(inputs.arch)
    if g.foreign and not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        raise VmError(
            f"the {g.arch} root's maintainer scripts need qemu-user through binfmt_misc "
            "(no /proc/sys/fs/binfmt_misc/qemu-aarch64): run `sh scripts/setup-vm.sh` as root"
        )
    packages = capture(["sh", str(PROVISION), "packages", inputs.kernel_release]).split()
    if g.foreign:
        drop = {_headers_package(inputs.kernel_release), *NATIVE_ONLY}
        packages = [p for p in packages if p not in drop]
    else:  # the host's own tests run in the native guest too (kuprobe vm test --host-suite)
        packages += capture(["sh", str(PROVISION), "dev-packages"]).split()
    sources = work / "guest.sources"
    sources.write_text(inputs.sources)
    if g.foreign:
        hooks = [
            '--essential-hook=chroot "$1" dpkg-divert --quiet --local --rename '
            f"--divert {PY3COMPILE_DIVERTED} --add {PY3COMPILE}",
            '--customize-hook=chroot "$1" dpkg-divert --quiet --local --rename '
            f"--divert {PY3COMPILE_DIVERTED} --remove {PY3COMPILE}",
        ]
    else:
        hooks = [
            f"--customize-hook=copy-in {PROVISION} {work / 'wheels'} /tmp",
            '--customize-hook=chroot "$1" env KUPROBE_WHEELS=/tmp/wheels sh /tmp/provision.sh '
            "configure",
            '--customize-hook=rm -rf "$1"/tmp/wheels "$1"/tmp/provision.sh',
        ]
    argv = [
        "mmdebstrap",
        f"--architectures={g.deb_arch}",
        "--variant=essential",
        "--mode=root",
        "--format=directory",
        "--include=" + ",".join(packages),
        "--aptopt=Acquire::Check-Valid-Until false",
        "--aptopt=Acquire::Languages none",
        *(f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES),
        # No fsync per unpacked file: a root that fails half-way is thrown away anyway.
        "--dpkgopt=force-unsafe-io",
        *hooks,
        '--customize-hook=rm -rf "$1"/var/cache/apt/*.bin',
        inputs.suite,
        str(root),
        str(sources),
    ]
    run_logged(argv, log=log, show=lambda line: line.startswith("I: "))


def _configure_foreign(g: Guest, root: Path, work: Path, log: Path) -> None:
    """What ``provision.sh configure`` does in a native root, done from the host: the pip
    requirements (the guest's wheels, pip --target), the mount points, the host name; then
    the root's Python byte-code, compiled by the host's python3 (the guest's version)."""
    reqs = capture(["sh", str(PROVISION), "pip-requirements"]).split()
    site = root / PYTHON_DIRS[2]
    argv = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile"]
    argv += ["--find-links", str(work / "wheels"), "--target", str(site)]
    argv += ["--only-binary=:all:", "--python-version", GUEST_PYTHON, "--implementation", "cp"]
    for platform in g.wheel_platforms:  # the guest's wheels, not the host's
        argv += ["--platform", platform]
    run_logged([*argv, *reqs], log=log)
    for d in ("sys/kernel/tracing", "sys/kernel/debug", "sys/fs/bpf"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "hostname").write_text("kuprobe-vm\n")
    python = "/usr/bin/python3"
    version = capture([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    if version.strip() != GUEST_PYTHON:
        say(f"warning: {python} is {version.strip()}, the guest's is {GUEST_PYTHON}: "
            "its byte-code is left to compile on import")  # fmt: skip
        return
    dirs = [str(root / d) for d in PYTHON_DIRS if (root / d).is_dir()]
    # Exit status 1 means a file did not compile (test data in Python 2 syntax): as
    # py3compile, go on; the log has the names.
    argv = [python, "-m", "compileall", "-q", "-j", "0", "-s", str(root), "-p", "/", *dirs]
    run_logged(["sh", "-c", '"$@" || [ $? = 1 ]', "compileall", *argv], log=log)


def _add_kernel(g: Guest, deb: Path, root: Path, work: Path, kver: str, log: Path) -> str:
    """The kernel's modules and /boot files into the root; dpkg -x goes to a side directory
    because unpacking over a merged-/usr root would replace its /lib symlink. Returns the
    name of the kernel file qemu boots (in ``work/out``)."""
    unpacked = work / "kernel"
    run_logged(["dpkg-deb", "-x", str(deb), str(unpacked)], log=log)
    modules = unpacked / "lib" / "modules" / kver
    shutil.copytree(modules, root / "usr/lib/modules" / kver, symlinks=True, dirs_exist_ok=True)
    shutil.copytree(unpacked / "boot", root / "boot", symlinks=True, dirs_exist_ok=True)
    # The host's depmod (kmod, scripts/setup-vm.sh) reads any arch's modules natively; the
    # root's own runs under qemu-user for a foreign guest (~30 s).
    host_depmod = shutil.which("depmod") or shutil.which("depmod", path="/usr/sbin:/sbin")
    if host_depmod:
        run_logged([host_depmod, "-b", str(root / "usr"), kver], log=log)
    else:
        run_logged(["chroot", str(root), "depmod", kver], log=log)
    build = root / "usr/lib/modules" / kver / "build"
    if not build.is_symlink() and not build.exists():
        raise VmError(f"linux-headers-{kver} did not make /lib/modules/{kver}/build")
    vmlinuz = unpacked / "boot" / f"vmlinuz-{kver}"
    if g.kernel_form == "vmlinux":
        extract_vmlinux(vmlinuz, work / "out" / "vmlinux")
        # The guest's own copy: tests decode the probed functions' real bytes from it.
        shutil.copy2(work / "out" / "vmlinux", root / "boot" / f"vmlinux-{kver}")
        return "vmlinux"
    unpack_arm64_image(vmlinuz, work / "out" / "Image")
    # The guest's copy of the raw Image (its bytes from _text on, with nokaslr).
    shutil.copy2(work / "out" / "Image", root / "boot" / f"Image-{kver}")
    return "Image"


def _du_bytes(path: Path) -> int:
    return int(capture(["du", "-sb", "--apparent-size", str(path)]).split()[0])


def _mke2fs(root: Path, out: Path, log: Path) -> None:
    require_tool("mke2fs")
    size_mb = _du_bytes(root) * 12 // 10 // 2**20 + 64
    run_logged(
        [
            "mke2fs", "-q", "-t", "ext4", "-O", "^has_journal", "-m", "0",
            "-L", "kuprobe-root", "-E", "root_owner=0:0", "-d", str(root),
            str(out), f"{size_mb}M",
        ],
        log=log,
    )  # fmt: skip


def _build(inputs: ImageInputs, cache: Path) -> Image:
    g = guest(inputs.arch)
    clock = Stopwatch()
    images = cache / "images"
    images.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"build-{inputs.key}-", dir=cache))
    log = work / "build.log"
    say(f"building {g.arch} image {inputs.key}: Debian {inputs.suite}, kernel "
        f"{inputs.kernel_release} {inputs.kernel_version} (log: {log})")  # fmt: skip
    try:
        (work / "out").mkdir()
        (work / "wheels").mkdir()
        deb = _download_kernel(inputs, cache, log)
        _download_wheels(g, work / "wheels", log)
        emulated = " (maintainer scripts under qemu-user)" if g.foreign else ""
        say(f"[{clock}] mmdebstrap: the {g.arch} guest root{emulated}")
        root = work / "root"
        _mmdebstrap(inputs, root, work, log)
        if g.foreign:
            say(f"[{clock}] kernel headers, pip requirements, byte-code (on the host)")
            _add_headers(inputs, root, work, cache, log)
            _configure_foreign(g, root, work, log)
        say(f"[{clock}] kernel modules, vmlinux, initramfs")
        kernel_name = _add_kernel(g, deb, root, work, inputs.kernel_release, log)
        modules = _initramfs.build_initramfs(
            root, inputs.kernel_release, work / "out" / "initrd.cpio"
        )
        say(f"[{clock}] mke2fs: the root image ({_du_bytes(root) // 2**20} MiB of files)")
        _mke2fs(root, work / "out" / "root.ext4", log)
        manifest = {
            "inputs": asdict(inputs),
            "key": inputs.key,
            "kernel": kernel_name,
            "initramfs_modules": modules,
            "seconds": {"build": round(clock.seconds(), 1)},
        }
        (work / "out" / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.copy2(log, work / "out" / "build.log")
        final = images / inputs.key
        if final.exists():
            shutil.rmtree(final)
        (work / "out").rename(final)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
    say(f"[{clock}] image {inputs.key} built in {final}")
    return Image.load(final)
