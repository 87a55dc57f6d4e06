#!/usr/bin/env bash
# kuprobe's set-up, idempotent: run it as often as you like (./run setup calls it).
#   1. Debian packages: BCC (python3-bpfcc), venv, compilers for the test targets, bpftrace
#   2. a kernel headers tree BCC can compile against
#   3. tracefs mounted
#   4. .venv/ from /usr/bin/python3 --system-site-packages, kuprobe installed editable
#   5. the probe targets (tests/targets/build.sh)
# Each step says what it does and skips itself when already done.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
state=${KUPROBE_STATE_DIR:-/var/lib/kuprobe}
step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf '\033[33mwarning:\033[0m %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
	echo "kuprobe setup needs root (it installs Debian packages): run it with sudo" >&2
	exit 1
fi
if [ ! -r /etc/debian_version ]; then
	echo "kuprobe setup knows Debian (and derivatives) only; install BCC, its headers and python3-venv by hand" >&2
	exit 1
fi

release=$(uname -r)
# systemtap-sdt-dev: <sys/sdt.h> for the USDT target (kuprobe/targets/usdt.c).
# i386 targets: gcc -m32 with lib32gcc-12-dev + libc6-dev-i386. Not gcc-multilib: Debian's
# gcc-multilib conflicts with the arm64 cross compiler, and installing one removes the other.
packages=(python3-bpfcc python3-venv python3-dev gcc lib32gcc-12-dev libc6-dev-i386
	gcc-aarch64-linux-gnu binutils bpftrace tmux systemtap-sdt-dev)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

have_build_tree() { [ -d "/lib/modules/$release/build/include" ]; }
apt_updated=0
apt_update() {
	if [ $apt_updated = 0 ]; then
		step "apt-get update"
		apt-get update -q -o Dpkg::Progress-Fancy=0 | sed 's/^/    /'
		apt_updated=1
	fi
}

if ! have_build_tree; then
	compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null || apt_update
	if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
		missing+=("linux-headers-$release")
	elif ! dpkg-query -W -f='${Status}' linux-headers-amd64 2>/dev/null | grep -q "install ok installed"; then
		missing+=(linux-headers-amd64)
	fi
fi

step "1/5 Debian packages"
if [ ${#missing[@]} -gt 0 ]; then
	apt_update
	note "installing: ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Progress-Fancy=0 "${missing[@]}" |
		grep -E '^(Setting up|Unpacking|Get:)' | sed 's/^/    /' || true
	for p in "${missing[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
			{ echo "error: $p did not install" >&2; exit 1; }
	done
else
	note "all installed"
fi

step "2/5 kernel headers for $release"
if have_build_tree; then
	note "/lib/modules/$release/build"
else
	# No headers package for this kernel: lay out the distro's current headers as a build tree
	# (BCC wants arch/ and include/ from the -common package and the generated files from the
	# arch package in one tree) and point BCC at it with its own setting, BCC_KERNEL_SOURCE.
	common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
	archdir=${common%-common}-amd64
	if [ -z "$common" ] || [ ! -d "$archdir" ]; then
		echo "error: no linux-headers-*-common / -amd64 under /usr/src" >&2
		exit 1
	fi
	tree="$state/kernel-headers/$release"
	stamp="$tree/.kuprobe-from"
	if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$common $archdir" ]; then
		note "laying out $tree from $(basename "$common") + $(basename "$archdir")"
		rm -rf "$tree.tmp"
		mkdir -p "$tree.tmp"
		cp -as "$common/." "$tree.tmp/"
		cp -as --remove-destination "$archdir/." "$tree.tmp/"
		echo "$common $archdir" >"$tree.tmp/.kuprobe-from"
		rm -rf "$tree"
		mv "$tree.tmp" "$tree"
	fi
	warn "no headers package for kernel $release: BCC compiles against $(basename "$common" -common)"
	warn "headers laid out in $tree (kuprobe sets BCC_KERNEL_SOURCE to it);"
	warn "programs that read kernel structs may see another kernel's layout"
fi

step "3/5 tracefs"
if [ -e /sys/kernel/tracing/uprobe_events ] || [ -e /sys/kernel/tracing/kprobe_events ]; then
	note "mounted"
else
	mount -t tracefs nodev /sys/kernel/tracing && note "mounted /sys/kernel/tracing" ||
		warn "could not mount tracefs (kretprobes with maxactive need it)"
fi

step "4/5 .venv"
if [ ! -x "$top/.venv/bin/python" ]; then
	/usr/bin/python3 -m venv --system-site-packages "$top/.venv"
	note "created from /usr/bin/python3 with --system-site-packages (so Debian's BCC imports)"
fi
stamp="$top/.venv/.kuprobe-installed"
if [ ! -f "$stamp" ] || [ "$top/pyproject.toml" -nt "$stamp" ]; then
	"$top/.venv/bin/pip" install -q --disable-pip-version-check -e "$top[dev]" 2>&1 | sed 's/^/    /'
	touch "$stamp"
	note "kuprobe installed editable, with its dev extras"
else
	note "up to date"
fi
"$top/.venv/bin/python" -c "import bcc" 2>/dev/null ||
	{ echo "error: BCC does not import in .venv (is python3-bpfcc installed?)" >&2; exit 1; }

step "5/5 probe targets"
bash "$top/tests/targets/build.sh" | sed 's/^/    /'
note "tests/targets/build/"
