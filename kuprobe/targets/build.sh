#!/usr/bin/env bash
# Builds the bundled probe targets (this folder's *.c, and those of $KUPROBE_TARGET_EXTRA) into
# $KUPROBE_TARGET_OUT/<arch>/ (idempotent: make-like mtime check). kuprobe.targets runs it for
# the demo and the cross-check (into a cache folder); tests/targets/build.sh for the tests.
#   <arch>/<stem>           PIE, dynamically linked (what users probe)
#   <arch>/<stem>-nopie     ET_EXEC, dynamically linked
#   <arch>/<stem>-stripped  PIE, stripped of .symtab
#   <arch>/<stem>-static    static, non-PIE (what the model loads)
# Every program links funcs.c. Arches whose compiler is missing are skipped with a warning
# unless KUPROBE_TARGET_ARCHES names them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${KUPROBE_TARGET_OUT:?set KUPROBE_TARGET_OUT to the folder to build into}
extra=${KUPROBE_TARGET_EXTRA:-}
arches=${KUPROBE_TARGET_ARCHES:-x86_64 i386 arm64}
cflags=(-O2 -g -fno-omit-frame-pointer -fcf-protection=none -Wall -Werror -I"$here")
# <sys/sdt.h> (systemtap-sdt-dev) lives in the host's multiarch folder, which gcc -m32 and the
# cross compilers do not search; it is arch-neutral: give every compiler a folder with it.
sdt=""
for d in /usr/include /usr/include/*-linux-gnu; do
	[ -e "$d/sys/sdt.h" ] && { sdt=$d; break; }
done
if [ -n "$sdt" ]; then
	mkdir -p "$out/include/sys"
	for h in sdt.h sdt-config.h; do
		[ -e "$sdt/sys/$h" ] && ln -sf "$sdt/sys/$h" "$out/include/sys/$h"
	done
	cflags+=(-I"$out/include")
fi
progs=()
for src in "$here"/*.c ${extra:+"$extra"/*.c}; do
	[ "$(basename "$src")" = funcs.c ] && continue
	if [ -z "$sdt" ] && grep -q '<sys/sdt.h>' "$src"; then
		echo "warning: no <sys/sdt.h> (install systemtap-sdt-dev): $(basename "$src") not built" >&2
		continue
	fi
	progs+=("$src")
done

strip_for() {
	case "$1" in
	arm64) echo "aarch64-linux-gnu-strip" ;;
	*) echo "strip" ;;
	esac
}

cc_for() {
	case "$1" in
	x86_64) echo "gcc" ;;
	i386) echo "gcc -m32" ;;
	arm64) echo "aarch64-linux-gnu-gcc" ;;
	esac
}

newer() { # newer OUT SRC... : true if OUT is missing or older than a SRC
	local o=$1; shift
	[ -e "$o" ] || return 0
	for s in "$@"; do [ "$s" -nt "$o" ] && return 0; done
	return 1
}

build() { # build OUT SRC CC FLAGS...
	local o=$1 src=$2 cc=$3; shift 3
	if newer "$o" "$src" "$here/funcs.c" "$here/funcs.h" "$0"; then
		$cc "${cflags[@]}" "$@" -o "$o" "$src" "$here/funcs.c"
		echo "  built $o"
	fi
}

for arch in $arches; do
	cc=$(cc_for "$arch")
	if ! command -v "${cc%% *}" >/dev/null; then
		echo "warning: no compiler for $arch (${cc%% *}); its targets are not built" >&2
		continue
	fi
	mkdir -p "$out/$arch"
	for src in "${progs[@]}"; do
		stem=$(basename "$src" .c)
		build "$out/$arch/$stem" "$src" "$cc" -fPIE -pie
		build "$out/$arch/$stem-nopie" "$src" "$cc" -fno-pie -no-pie
		if newer "$out/$arch/$stem-stripped" "$out/$arch/$stem"; then
			$(strip_for "$arch") -o "$out/$arch/$stem-stripped" "$out/$arch/$stem"
		fi
		build "$out/$arch/$stem-static" "$src" "$cc" -static -fno-pie -no-pie
	done
done
