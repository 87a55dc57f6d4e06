#!/bin/sh
# Host side of the kprobe VM (`kuprobe vm build|test|run`): installs what the offline qemu
# runner needs on a Debian 12 host. Idempotent: installs only what is missing.
#
#   qemu-system-x86   boots the guest (TCG: no KVM needed)
#   mmdebstrap        builds the guest's Debian root file system from the registry
#   e2fsprogs         mke2fs -d: the read-only ext4 root image
#   xz-utils, zstd    unpack the kernel image (vmlinuz -> vmlinux) whatever its compression
#
# Usage: sh scripts/setup-vm.sh        (as root)
set -eu

say() { printf '[setup-vm] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    say "must run as root (apt-get install)" >&2
    exit 1
fi

need=""
for pkg in qemu-system-x86 mmdebstrap e2fsprogs xz-utils zstd debian-archive-keyring; do
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

# The builder resolves the guest kernel from the apt lists (linux-image-amd64's dependency).
if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
    say "apt lists lack linux-image-amd64: apt-get update"
    apt-get update -q
fi

say "qemu: $(qemu-system-x86_64 --version | head -n 1)"
say "mmdebstrap: $(mmdebstrap --version)"
say "done; next: kuprobe vm build (cached), kuprobe vm test"
