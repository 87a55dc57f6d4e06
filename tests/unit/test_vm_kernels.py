"""The kernel matrix's catalogue (kuprobe/vm/kernels.py) on faked apt lists: the newest
kernel of a series, an ABI bump picked up, Debian's version order. No network."""

from __future__ import annotations

from pathlib import Path

import pytest

from kuprobe.vm import kernels
from kuprobe.vm.guests import GUESTS, guest
from kuprobe.vm.host import VmError

# The flavours, apart: a release is written from its parts, so nothing checked in names a
# Debian kernel ABI (tests/unit/test_crosscheck_predictions.py).
AMD64, CLOUD_AMD64, PAE = "amd64", "cloud-amd64", "686-pae"

MAIN = "deb.debian.org_debian_dists_{suite}_main_binary-{arch}_Packages"
SECURITY = "deb.debian.org_debian-security_dists_{suite}-security_main_binary-{arch}_Packages"


def stanza(package: str, version: str, depends: str = "") -> str:
    lines = [f"Package: {package}", "Source: linux", f"Version: {version}"]
    if depends:
        lines.append(f"Depends: {depends}")
    lines += ["Description: a faked package", " with a continuation line"]
    return "\n".join(lines) + "\n"


def kernel_stanzas(abi: str, flavour: str, version: str, kbuild: str) -> list[str]:
    """An image and its headers, as Debian's linux source package lists them."""
    release = f"{abi}-{flavour}"
    return [
        stanza(f"linux-image-{release}", version, "kmod, linux-base (>= 4.3~)"),
        stanza(f"linux-image-{release}-dbg", version),
        stanza(
            f"linux-headers-{release}",
            version,
            f"linux-headers-{abi}-common (= {version}), {kbuild} (>= {version}), "
            "linux-compiler-gcc-10-x86",
        ),
    ]


def write_list(lists: Path, name: str, stanzas: list[str]) -> None:
    lists.mkdir(parents=True, exist_ok=True)
    (lists / name).write_text("\n".join(stanzas))


@pytest.fixture
def bullseye(tmp_path: Path) -> Path:
    """Faked bullseye amd64 lists: 5.10.0-30 in the suite, 5.10.0-32 in -security, and what
    must not be picked: a newer cloud flavour and a 6.1 backport."""
    lists = tmp_path / "lists"
    main = [
        *kernel_stanzas("5.10.0-30", "amd64", "5.10.218-1", "linux-kbuild-5.10"),
        stanza("busybox-static", "1:1.30.1-6+b3"),
        stanza("linux-image-amd64", "5.10.218-1", f"linux-image-5.10.0-30-{AMD64}"),
    ]
    security = [
        *kernel_stanzas("5.10.0-32", "amd64", "5.10.223-1", "linux-kbuild-5.10"),
        stanza(f"linux-image-5.10.0-33-{CLOUD_AMD64}", "5.10.230-1"),
        *kernel_stanzas("6.1.0-0.deb11.52", "amd64", "6.1.170-1~deb11u1", "linux-kbuild-6.1"),
        stanza("busybox-static", "1:1.30.1-6+deb11u1"),
    ]
    write_list(lists, MAIN.format(suite="bullseye", arch="amd64"), main)
    write_list(lists, SECURITY.format(suite="bullseye", arch="amd64"), security)
    # Another suite's and another arch's lists are not read for bullseye amd64.
    write_list(
        lists,
        MAIN.format(suite="bookworm", arch="amd64"),
        kernel_stanzas("5.10.0-99", "amd64", "5.10.999-1", "linux-kbuild-5.10"),
    )
    write_list(
        lists,
        MAIN.format(suite="bullseye", arch="arm64"),
        kernel_stanzas("5.10.0-99", "amd64", "5.10.999-1", "linux-kbuild-5.10"),
    )
    return lists


def test_the_newest_kernel_of_the_series_is_picked(bullseye: Path) -> None:
    k = kernels.resolve("x86_64", "5.10", bullseye)
    assert (k.release, k.version, k.suite) == (f"5.10.0-32-{AMD64}", "5.10.223-1", "bullseye")
    assert k.headers_common == "linux-headers-5.10.0-32-common"
    assert k.kbuild == "linux-kbuild-5.10"
    assert k.busybox_version == "1:1.30.1-6+deb11u1"
    assert k.image_package == f"linux-image-5.10.0-32-{AMD64}"


def test_an_abi_bump_in_the_lists_is_picked_up(bullseye: Path) -> None:
    name = SECURITY.format(suite="bullseye", arch="amd64")
    before = (bullseye / name).read_text()
    bump = kernel_stanzas("5.10.0-33", "amd64", "5.10.226-1", "linux-kbuild-5.10")
    (bullseye / name).write_text(before + "\n" + "\n".join(bump))
    k = kernels.resolve("x86_64", "5.10", bullseye)
    assert (k.release, k.version) == (f"5.10.0-33-{AMD64}", "5.10.226-1")


def test_unserved_or_headerless_kernels_are_passed_over(bullseye: Path) -> None:
    skip = frozenset(
        {
            f"linux-image-5.10.0-32-{AMD64}:amd64=5.10.223-1",
            "busybox-static:amd64=1:1.30.1-6+deb11u1",
        }
    )
    k = kernels.resolve("x86_64", "5.10", bullseye, skip)
    assert (k.release, k.busybox_version) == (f"5.10.0-30-{AMD64}", "1:1.30.1-6+b3")
    # An image whose headers are not listed at its version is no kernel of the matrix.
    name = SECURITY.format(suite="bullseye", arch="amd64")
    text = (bullseye / name).read_text()
    (bullseye / name).write_text(
        text + "\n" + stanza(f"linux-image-5.10.0-40-{AMD64}", "5.10.240-1")
    )
    assert kernels.resolve("x86_64", "5.10", bullseye).release == f"5.10.0-32-{AMD64}"


def test_trixie_abis_and_the_i386_flavour(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    trixie = [
        *kernel_stanzas("6.12.96+deb13", "amd64", "6.12.96-1", "linux-kbuild-6.12.96+deb13"),
        *kernel_stanzas("6.12.118+deb13", "amd64", "6.12.118-1", "linux-kbuild-6.12.118+deb13"),
        *kernel_stanzas("6.12.118+deb13", "rt-amd64", "6.12.119-1", "linux-kbuild-6.12.118+deb13"),
        stanza("busybox-static", "1:1.37.0-6+b9"),
    ]
    write_list(lists, MAIN.format(suite="trixie", arch="amd64"), trixie)
    k = kernels.resolve("x86_64", "6.12", lists)
    assert (k.release, k.kbuild) == ("6.12.118+deb13-amd64", "linux-kbuild-6.12.118+deb13")
    bookworm = [
        *kernel_stanzas("6.1.0-57", "686-pae", "6.1.192-3", "linux-kbuild-6.1"),
        stanza("busybox-static", "1:1.35.0-4+deb12u1+b1"),
    ]
    write_list(lists, MAIN.format(suite="bookworm", arch="i386"), bookworm)
    k = kernels.resolve("i386", "6.1", lists)
    assert (k.release, k.deb_arch) == (f"6.1.0-57-{PAE}", "i386")
    with pytest.raises(VmError, match="no trixie i386"):
        kernels.resolve("i386", "6.12", lists)
    with pytest.raises(VmError, match="no kernel series"):
        kernels.resolve("x86_64", "4.19", lists)


@pytest.mark.parametrize(
    ("a", "b", "sign"),
    [
        ("6.12.118-1", "6.12.96-1", 1),
        ("5.10.223-1", "5.10.223-1", 0),
        ("1:1.30.1-6+deb11u1", "1:1.30.1-6+b3", 1),
        ("1:1.0-1", "2.0-1", 1),
        ("1.0~rc1-1", "1.0-1", -1),
        ("6.1.170-1~deb11u1", "6.1.170-1", -1),
        ("1.0-1", "1.0", 1),
        ("1.0a", "1.0+", -1),
    ],
)
def test_debian_version_order(a: str, b: str, sign: int) -> None:
    got = kernels.compare_versions(a, b)
    assert (got > 0) - (got < 0) == sign
    back = kernels.compare_versions(b, a)
    assert (back > 0) - (back < 0) == -sign


def test_private_sources_rename_the_hosts_suite() -> None:
    host = (
        "Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm bookworm-updates\n\n"
        "Types: deb\nURIs: http://deb.example/debian-security\nSuites: bookworm-security\n"
    )
    text = kernels.private_sources(host, "bookworm", "bullseye")
    assert "Suites: bullseye bullseye-updates\n" in text
    assert "Suites: bullseye-security\n" in text
    assert "bookworm" not in text


def test_i386_is_a_minimal_guest_only() -> None:
    assert set(GUESTS) == {"x86_64", "arm64"}  # the full guests (crosscheck runs) as before
    g = guest("i386")
    assert (g.flavour, g.deb_arch, g.qemu, g.full) == ("686-pae", "i386", "qemu-system-i386", False)
    assert (guest("x86_64").flavour, guest("arm64").flavour) == ("amd64", "arm64")
