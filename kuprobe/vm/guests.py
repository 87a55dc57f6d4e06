"""The guests the VM runner builds and boots, one record per architecture.

Everything that differs between the x86_64 and the arm64 guest is in `GUESTS`; the builder
(`image`) and the booter (`boot`) read it and name no arch themselves. `MINIMAL_GUESTS` are
arches booted only as minimal guests (`minimal`: a kernel of the matrix, no Debian root).
"""

from __future__ import annotations

from dataclasses import dataclass

from kuprobe.errors import KuprobeValueError

DEFAULT_ARCH = "x86_64"


@dataclass(frozen=True)
class Guest:
    """What one guest architecture needs, from the registry to the qemu command line."""

    arch: str  # kuprobe's name (uname -m of the guest may differ: aarch64)
    deb_arch: str  # Debian's: amd64, arm64
    kernel_meta: str  # the metapackage naming the current kernel ABI
    qemu: str
    machine_args: tuple[str, ...]
    console: str  # the serial console device, for the kernel command line
    wheel_platforms: tuple[str, ...]  # pip --platform tags of the guest's wheels
    # How the kernel file qemu boots is made from /boot/vmlinuz-*: "vmlinux" unpacks the
    # ELF vmlinux from a bzImage (PVH entry, ~1 s under TCG instead of ~10 s of the kernel's
    # own decompressor); "image" is the arm64 Image (already uncompressed, or gzip).
    kernel_form: str
    uname_machine: str
    # make's variables to build a module for this arch's kernel on the host: the kernel's ARCH
    # and the compiler (CC last), kuprobe/crosscheck/kmod_build.py
    kbuild: tuple[str, ...]
    # A full guest (Debian root, BCC: `kuprobe vm build`); otherwise only minimal guests
    # (`--kernel`: kernel, initramfs, busybox) are made for this arch.
    full: bool = True

    @property
    def flavour(self) -> str:
        """Debian's kernel flavour: amd64, arm64, 686-pae."""
        return self.kernel_meta.removeprefix("linux-image-")

    @property
    def foreign(self) -> bool:
        """Maintainer scripts of its root run on an x86_64 host only through qemu-user."""
        return self.deb_arch != "amd64"

    @property
    def apt_suffix(self) -> str:
        """`:arm64` for apt on an amd64 host where the package is foreign, else ''."""
        return f":{self.deb_arch}" if self.foreign else ""


GUESTS: dict[str, Guest] = {
    "x86_64": Guest(
        arch="x86_64",
        deb_arch="amd64",
        kernel_meta="linux-image-amd64",
        qemu="qemu-system-x86_64",
        # The measured route (DESIGN.md): TCG (no KVM here), -cpu max, 2 vCPUs.
        machine_args=("-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2048"),
        console="ttyS0",
        wheel_platforms=("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux1_x86_64"),
        kernel_form="vmlinux",
        uname_machine="x86_64",
        kbuild=("ARCH=x86", "CC=gcc"),
    ),
    "arm64": Guest(
        arch="arm64",
        deb_arch="arm64",
        kernel_meta="linux-image-arm64",
        qemu="qemu-system-aarch64",
        # Measured: pointer authentication with qemu's own (impdef) algorithm is ~3x faster
        # under TCG than the architected QARMA of plain `-cpu max`.
        machine_args=(
            *("-M", "virt", "-accel", "tcg", "-cpu", "max,pauth-impdef=on"),
            *("-smp", "2", "-m", "2048"),
        ),
        console="ttyAMA0",
        wheel_platforms=("manylinux2014_aarch64", "manylinux_2_17_aarch64"),
        kernel_form="image",
        uname_machine="aarch64",
        kbuild=("ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-", "CC=aarch64-linux-gnu-gcc"),
    ),
}


# Arches with minimal guests only (`kuprobe vm run --kernel`): Debian's 686-pae kernel.
MINIMAL_GUESTS: dict[str, Guest] = {
    "i386": Guest(
        arch="i386",
        deb_arch="i386",
        kernel_meta="linux-image-686-pae",
        qemu="qemu-system-i386",
        machine_args=("-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2048"),
        console="ttyS0",
        wheel_platforms=(),
        # The bzImage as it is: a 32-bit kernel has no PVH entry to boot a vmlinux through.
        kernel_form="bzimage",
        uname_machine="i686",
        kbuild=("ARCH=i386", "CC=gcc"),
        full=False,
    ),
}
ALL_GUESTS: dict[str, Guest] = {**GUESTS, **MINIMAL_GUESTS}


def guest(arch: str | None) -> Guest:
    """The record for `arch` (x86_64 when None); aarch64 is accepted for arm64."""
    name = DEFAULT_ARCH if arch is None else ("arm64" if arch == "aarch64" else arch)
    try:
        return ALL_GUESTS[name]
    except KeyError:
        known = ", ".join(ALL_GUESTS)
        raise KuprobeValueError(f"no VM guest for arch {arch!r} (known: {known})") from None
