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

from kuprobe.vm._host import VmError

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
