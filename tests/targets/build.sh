#!/usr/bin/env bash
# Builds the probe targets the tests use into tests/targets/build/<arch>/: the bundled ones
# (kuprobe/targets/*.c) and this folder's own (model_funcs.c). See kuprobe/targets/build.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
KUPROBE_TARGET_OUT="$here/build" KUPROBE_TARGET_EXTRA="$here" \
	exec bash "$here/../../kuprobe/targets/build.sh" "$@"
