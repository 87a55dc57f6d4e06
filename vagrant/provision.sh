#!/bin/sh
# Provisioning of the kuprobe kprobe VM: a Debian 12 system whose kernel has kprobes, with BCC,
# the kernel's own headers, pytest and kuprobe's Python dependencies.
#
# One script, two users:
#   - Vagrant runs it with no argument inside the Debian 12 box (`vagrant up`);
#   - the offline runner (`kuprobe vm build`, kuprobe/vm/image.py) asks it for the package list
#     (`packages KVER`), has mmdebstrap install those into the guest root, then runs
#     `configure` chrooted in that root.
#
# Usage:
#   provision.sh kernel          Vagrant, first: the newest Debian 12 kernel (then reboot)
#   provision.sh [vagrant]       Vagrant: install packages for the running kernel, configure
#   provision.sh packages KVER   print the Debian packages the guest needs, one per line
#   provision.sh dev-packages    print what an amd64 guest adds to run the host's own tests
#                                there (`kuprobe vm test --host-suite`): the compilers and
#                                tools `./run setup` installs on a host, 32-bit libc included
#   provision.sh pip-requirements  print the pip requirements `configure` installs
#   provision.sh configure       inside the guest root: pip wheels, mount points, settings
#
# Environment: KUPROBE_WHEELS=DIR installs the pip requirements from DIR only (no index):
# the offline runner downloads them on the host, so the guest root needs no network.
set -eu

# pip requirements that Debian 12 does not meet (python3-capstone is 4.0; kuprobe needs 5).
PIP_REQUIREMENTS="capstone>=5.0"

packages() {
    kver=$1
    cat <<EOF
linux-headers-$kver
python3
python3-bpfcc
python3-pytest
python3-pyelftools
python3-rich
python3-pyroute2
python3-unicorn
python3-pip
busybox-static
kmod
mount
iproute2
procps
EOF
}

# What scripts/setup.sh installs on a host for the tests, less what only the host needs (the
# arm64 cross compiler and bpftrace are for building targets and benchmarks): so the host's
# live and CLI tests run in an amd64 guest whose kernel has kprobes as on a user's machine.
dev_packages() {
    cat <<EOF
gcc
libc6-dev
lib32gcc-12-dev
libc6-dev-i386
systemtap-sdt-dev
git
tmux
python3-venv
EOF
}

configure() {
    say "pip: $PIP_REQUIREMENTS"
    if [ -n "${KUPROBE_WHEELS:-}" ]; then
        # shellcheck disable=SC2086
        python3 -m pip install -q --root-user-action=ignore --break-system-packages \
            --no-index --find-links "$KUPROBE_WHEELS" $PIP_REQUIREMENTS
    else
        # shellcheck disable=SC2086
        python3 -m pip install -q --root-user-action=ignore --break-system-packages \
            $PIP_REQUIREMENTS
    fi
    mkdir -p /sys/kernel/tracing /sys/kernel/debug /sys/fs/bpf
    # BCC finds the headers through /lib/modules/$(uname -r)/build (linux-headers-* makes it).
    echo "kuprobe-vm" >/etc/hostname
}

kernel() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # The archive keeps headers only for its current kernel ABI: install that kernel (and
    # reboot into it: Vagrant's `reboot: true`).
    apt-get install -y -q --no-install-recommends linux-image-amd64
}

vagrant() {
    kver=$(uname -r)
    say "kernel $kver"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2046
    apt-get install -y -q --no-install-recommends $(packages "$kver") $(dev_packages)
    configure
    # systemd mounts tracefs and debugfs; bpffs is mounted here for BCC's pinned maps.
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
    # The uncompressed kernel image, as the offline runner's guest has it (tests decode the
    # probed functions' bytes from it).
    if [ -d /kuprobe/kuprobe ] && [ ! -f "/boot/vmlinux-$kver" ]; then
        PYTHONPATH=/kuprobe python3 -c 'import sys; from pathlib import Path
from kuprobe.vm.kernel import extract_vmlinux
extract_vmlinux(Path(sys.argv[1]), Path(sys.argv[2]))' "/boot/vmlinuz-$kver" "/boot/vmlinux-$kver"
    fi
    say "done: the commands in vagrant/README.md run the VM tests (the model's predictions first)"
}

say() { printf '[provision] %s\n' "$*" >&2; }

case "${1:-vagrant}" in
    packages) packages "$2" ;;
    dev-packages) dev_packages ;;
    pip-requirements) echo "$PIP_REQUIREMENTS" ;;
    configure) configure ;;
    kernel) kernel ;;
    vagrant) vagrant ;;
    *)
        say "unknown command: $1 (packages KVER | dev-packages | pip-requirements | configure |" \
            "kernel | vagrant)"
        exit 2
        ;;
esac
