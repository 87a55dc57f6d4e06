"""The uncompressed vmlinux inside a bzImage, which qemu boots directly through its PVH entry.

Under TCG the compressed kernel's own decompressor is slow (~10 s); the ELF vmlinux with a
PVH note (CONFIG_PVH) starts in ~1 s. Same idea as the kernel's scripts/extract-vmlinux: find
the compressed payload by its magic and unpack until the stream ends.
"""

from __future__ import annotations

import lzma
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

from kuprobe.vm.host import VmError

ELF_MAGIC = b"\x7fELF"


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _gzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def _zstd(data: bytes) -> bytes:
    # zstd -d stops with an error at the trailing bytes after the frame; its output is whole.
    done = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=False)
    return done.stdout


# (magic, unpacker), the kernel's CONFIG_KERNEL_* choices that Debian has used.
_FORMATS: tuple[tuple[bytes, Callable[[bytes], bytes]], ...] = (
    (b"\xfd7zXZ\x00", _xz),
    (b"\x1f\x8b\x08", _gzip),
    (b"\x28\xb5\x2f\xfd", _zstd),
)


def extract_vmlinux(bzimage: Path, out: Path) -> None:
    """Write the ELF vmlinux packed in `bzimage` to `out`."""
    data = bzimage.read_bytes()
    for magic, unpack in _FORMATS:
        start = data.find(magic)
        while start >= 0:
            try:
                elf = unpack(data[start:])
            except (lzma.LZMAError, zlib.error, OSError):
                elf = b""
            if elf.startswith(ELF_MAGIC):
                out.write_bytes(elf)
                return
            start = data.find(magic, start + 1)
    raise VmError(f"no compressed ELF kernel found in {bzimage}")


# arch/arm64/include/asm/image.h: the Image header's magic at offset 56, "ARM\x64".
ARM64_IMAGE_MAGIC = b"ARM\x64"
ARM64_MAGIC_OFFSET = 56


def unpack_arm64_image(vmlinuz: Path, out: Path) -> None:
    """Write the arm64 Image in `vmlinuz` (as is, or gunzipped: Debian has shipped both) to
    `out`; qemu boots it directly and it holds the kernel's bytes from _text on."""
    data = vmlinuz.read_bytes()
    if data.startswith(b"\x1f\x8b\x08"):
        data = _gzip(data)
    magic = data[ARM64_MAGIC_OFFSET : ARM64_MAGIC_OFFSET + 4]
    if magic != ARM64_IMAGE_MAGIC:
        raise VmError(f"{vmlinuz} is not an arm64 Image (magic {magic!r})")
    out.write_bytes(data)
