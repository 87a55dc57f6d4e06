#!/usr/bin/env bash
# Builds the probe targets the tests use into tests/targets/build/<arch>/: the bundled ones
# (kuprobe/targets/*.c) and this folder's own (model_funcs.c). See kuprobe/targets/build.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
KUPROBE_TARGET_OUT="$here/build" KUPROBE_TARGET_EXTRA="$here" \
	bash "$here/../../kuprobe/targets/build.sh" "$@"
# The kprobe scenarios' test module for the x86_64 guest (kuprobe/targets/kmod): its kernel's
# headers come from the registry once. Without them the VM's kprobe scenarios fail, saying so.
py="$here/../../.venv/bin/python"
[ -x "$py" ] || py=python3
"$py" -m kuprobe.crosscheck.kmod_build "$here/build/kmod" ||
	echo "warning: the test module (kuprobe/targets/kmod) was not built" >&2
