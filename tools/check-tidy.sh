#!/usr/bin/env bash
# check-tidy.sh — fail if `go mod tidy` would change go.mod or go.sum.
#
# A go.mod that tidy rewrites means a dependency is listed wrongly (a
# direct import marked indirect, a module nothing uses, a missing sum), so
# what the build resolves is not what the file says. This runs tidy on a
# copy of the module files' state, prints the difference, and puts the
# files back as they were either way: it checks, it never fixes.
#
# Usage: tools/check-tidy.sh   (from anywhere; exit 0 tidy, 1 not tidy, 2 tidy failed)
set -euo pipefail
cd "$(dirname "$0")/.."

saved=$(mktemp -d)
trap 'cp "$saved/go.mod" go.mod; cp "$saved/go.sum" go.sum; rm -rf "$saved"' EXIT
cp go.mod go.sum "$saved/"

if ! go mod tidy; then
	echo "check-tidy: go mod tidy failed" >&2
	exit 2
fi
untidy=0
diff -u "$saved/go.mod" go.mod >"$saved/diff" || untidy=1
diff -u "$saved/go.sum" go.sum >>"$saved/diff" || untidy=1
if [ "$untidy" -ne 0 ]; then
	cat "$saved/diff"
	echo "check-tidy: go.mod/go.sum are not tidy: run 'go mod tidy' and commit the result" >&2
	exit 1
fi
echo "check-tidy: go.mod and go.sum are tidy"
