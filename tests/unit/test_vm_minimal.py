"""Minimal guests (kuprobe/vm/minimal.py): their key, their initramfs, their qemu command
line (no root disk); no network, no qemu."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from kuprobe.vm import boot, minimal
from kuprobe.vm.boot import qemu_argv
from kuprobe.vm.image import Image

# The flavours, apart: a release is written from its parts, so nothing checked in names a
# Debian kernel ABI (tests/unit/test_crosscheck_predictions.py).
AMD64, PAE = "amd64", "686-pae"


def inputs(**change: str) -> minimal.MinimalInputs:
    fields = {
        "arch": "x86_64",
        "series": "5.10",
        "kernel_release": f"5.10.0-32-{AMD64}",
        "kernel_version": "5.10.223-1",
        "busybox_version": "1:1.30.1-6+deb11u1",
        "init_sha256": "0" * 64,
        **change,
    }
    return minimal.MinimalInputs(**fields)  # type: ignore[arg-type]


def test_the_minimal_guests_key_is_its_inputs() -> None:
    assert inputs().key == inputs().key
    assert len(inputs().key) == 16
    keys = {
        inputs().key,
        inputs(kernel_release=f"5.10.0-33-{AMD64}").key,
        inputs(kernel_version="5.10.223-2").key,
        inputs(busybox_version="1:1.30.1-7").key,
        inputs(init_sha256="1" * 64).key,
        inputs(arch="i386").key,
    }
    assert len(keys) == 6


def cpio_entries(data: bytes) -> dict[str, bytes]:
    """name -> body of a newc archive (as Cpio writes it)."""
    out: dict[str, bytes] = {}
    pos = 0
    while True:
        header = data[pos : pos + 110].decode()
        size, namesize = int(header[54:62], 16), int(header[94:102], 16)
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = data[pos : pos + size]
        pos += size
        pos += -pos % 4


def test_the_minimal_initramfs_holds_busybox_and_the_9p_modules(tmp_path: Path) -> None:
    moddir = tmp_path / "lib/modules/6.12.1-amd64"
    (moddir / "kernel/net/9p").mkdir(parents=True)
    (moddir / "kernel/fs/9p").mkdir(parents=True)
    (moddir / "kernel/net/9p/9pnet.ko.xz").write_bytes(lzma.compress(b"9pnet-module"))
    (moddir / "kernel/net/9p/9pnet_virtio.ko.xz").write_bytes(lzma.compress(b"virtio-module"))
    (moddir / "kernel/fs/9p/9p.ko.xz").write_bytes(lzma.compress(b"9p-module"))
    (moddir / "modules.dep").write_text(
        "kernel/net/9p/9pnet.ko.xz:\n"
        "kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\n"
        "kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz\n"
    )  # virtio_pci: built in (not in modules.dep)
    out = tmp_path / "initrd.cpio"
    names = minimal.build_initramfs(tmp_path, "6.12.1-amd64", b"BUSYBOX", out)
    assert names == ["9pnet.ko", "9pnet_virtio.ko", "9p.ko"]
    entries = cpio_entries(out.read_bytes())
    assert entries["bin/busybox"] == b"BUSYBOX"
    assert entries["modules/9pnet_virtio.ko"] == b"virtio-module"  # unpacked on the host
    assert (
        entries["modules.order"] == b"/modules/9pnet.ko\n/modules/9pnet_virtio.ko\n/modules/9p.ko\n"
    )
    assert entries["init"].decode() == minimal.MINIMAL_INIT
    assert {"run/kuprobe", "tmp", "dev/console"} <= set(entries)


def test_a_minimal_guest_boots_without_a_root_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(boot, "require_tool", lambda name: f"/usr/bin/{name}")
    mini = minimal.MinimalImage(tmp_path, f"5.10.0-32-{PAE}", "i386", "bzImage", "5.10")
    argv = qemu_argv(mini, tmp_path / "job", [tmp_path], 60)
    assert "qemu-system-i386" in argv[3]
    assert "-drive" not in argv
    assert argv[argv.index("-kernel") + 1] == str(tmp_path / "bzImage")
    assert argv.count("-virtfs") == 2
    full = qemu_argv(Image(tmp_path, f"6.1.0-57-{AMD64}"), tmp_path / "job", [tmp_path], 60)
    assert full[full.index("-drive") + 1].startswith(f"file={tmp_path / 'root.ext4'},")
    assert full.index("-drive") < full.index("-virtfs")  # the full guest's command as before
