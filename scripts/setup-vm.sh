#!/bin/sh
# Host side of the kprobe VMs (`kuprobe vm build|test|run [--arch x86_64|arm64]`): installs
# what the offline qemu runner needs on a Debian 12 host. Idempotent: installs only what is
# missing, and says what it does.
#
#   qemu-system-x86   boots the x86_64 guest (TCG: no KVM needed)
#   qemu-system-arm   boots the arm64 guest (qemu-system-aarch64 -M virt, TCG)
#   qemu-user-static, binfmt-support, arch-test
#                     run the arm64 root's maintainer scripts on this host while mmdebstrap
#                     builds it (qemu-aarch64 through binfmt_misc)
#   mmdebstrap        builds the guests' Debian root file systems from the registry
#   e2fsprogs         mke2fs -d: the read-only ext4 root images
#   kmod              depmod -b: the guest kernel's module index, made natively
#   xz-utils, zstd    unpack the kernel image (vmlinuz -> vmlinux) whatever its compression
#
# It also adds arm64 as a foreign dpkg architecture (apt lists only: nothing arm64 is
# installed on the host), so the builder resolves and downloads the arm64 kernel offline of
# the guest, as it does the amd64 one.
#
# Usage: sh scripts/setup-vm.sh        (as root)
set -eu

say() { printf '[setup-vm] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    say "must run as root (apt-get install)" >&2
    exit 1
fi

need=""
for pkg in qemu-system-x86 qemu-system-arm qemu-user-static binfmt-support arch-test \
    mmdebstrap e2fsprogs kmod xz-utils zstd debian-archive-keyring; do
    if ! dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        need="$need $pkg"
    fi
done

if [ -z "$need" ]; then
    say "host packages already installed"
else
    say "installing:$need"
    export DEBIAN_FRONTEND=noninteractive
    # A package not found usually means stale lists: update once and retry.
    # shellcheck disable=SC2086
    if ! apt-get install -y -q --no-install-recommends $need; then
        say "apt-get update, then retrying"
        apt-get update -q
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends $need
    fi
fi

# binfmt_misc: qemu-user-static registers qemu-aarch64 there; in a container it may need
# mounting first (then binfmt-support re-imports the formats).
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    say "mounting binfmt_misc"
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    say "registering qemu-aarch64 with binfmt_misc"
    update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi
if arch-test arm64 >/dev/null 2>&1; then
    say "arm64 binaries run on this host (qemu-aarch64 via binfmt_misc)"
else
    say "warning: arm64 binaries do not run here: the arm64 image cannot be built" >&2
fi

# The builder resolves each guest's kernel from the apt lists (linux-image-amd64's and
# linux-image-arm64:arm64's dependency).
update=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    say "dpkg --add-architecture arm64 (apt lists only)"
    dpkg --add-architecture arm64
    update=1
fi
apt-cache show linux-image-amd64 >/dev/null 2>&1 || update=1
apt-cache show linux-image-arm64:arm64 >/dev/null 2>&1 || update=1
if [ $update = 1 ]; then
    say "apt-get update (the lists lack a guest kernel)"
    apt-get update -q
fi

say "qemu: $(qemu-system-x86_64 --version | head -n 1)"
say "qemu: $(qemu-system-aarch64 --version | head -n 1)"
say "mmdebstrap: $(mmdebstrap --version)"
say "done; next: kuprobe vm build [--arch arm64] (cached), kuprobe vm test [--arch arm64]"
