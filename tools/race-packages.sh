#!/usr/bin/env bash
# race-packages.sh — print the packages whose tests can run under the race
# detector on any machine: those whose tests need neither KVM nor QEMU.
#
# The race detector slows code 2-20x and only sees the Go side of a
# process, so it is worth running where the concurrency is Go's own (the
# virtqueues, the switch, vhost-user, the disk backends, the supervisor's
# bookkeeping), not where a test waits on a guest under KVM or QEMU. A
# package is left out when
#   - it has tests that need /dev/kvm (they run guests; the same list as
#     `go run ./tools/kvmtest list`, internal/kvmtests), or
#   - one of its test files starts QEMU (names qemu-system-x86_64 and runs a command: a test
#     that only looks QEMU's files up, as tools/mkimage's does, is kept), or
# when it is tools/e2e (every test boots the appliance), or vmm/seccomp (its tests load the VMM's
# seccomp filters, which allow the system calls of the pure-Go binary the image carries: the race
# detector's runtime is C, and its threads' stacks alone, mprotect, would be refused). Packages without
# test files are left out too: there is nothing to run.
#
# Usage:  go test -race -count=1 $(tools/race-packages.sh)
#         tools/race-packages.sh -v    also say on stderr what was left out and why
set -euo pipefail
cd "$(dirname "$0")/.."

verbose=0
[ "${1:-}" = "-v" ] && verbose=1

why() { [ "$verbose" = 1 ] && echo "race-packages: leaving out $1: $2" >&2 || true; }

# The directories of the packages with KVM tests, one per line.
kvmdirs=$(go run ./tools/kvmtest list | cut -d' ' -f1)

go list -f '{{.ImportPath}}|{{.Dir}}|{{join .TestGoFiles " "}} {{join .XTestGoFiles " "}}' ./... |
while IFS='|' read -r pkg dir files; do
	files=${files# }
	files=${files% }
	if [ -z "$files" ]; then
		why "$pkg" "no test files"
		continue
	fi
	case $pkg in
	*/tools/e2e) why "$pkg" "end-to-end tests boot the appliance"; continue ;;
	*/vmm/seccomp) why "$pkg" "its filters refuse the race detector's own system calls"; continue ;;
	esac
	paths=()
	for f in $files; do paths+=("$dir/$f"); done
	if grep -qxF "${dir#"$PWD"/}" <<<"$kvmdirs"; then
		why "$pkg" "tests need /dev/kvm"
		continue
	fi
	qemu=0
	for f in $(grep -l 'qemu-system-x86_64' "${paths[@]}" || true); do
		grep -q 'exec\.Command' "$f" && qemu=1
	done
	if [ "$qemu" = 1 ]; then
		why "$pkg" "tests start QEMU"
		continue
	fi
	echo "$pkg"
done
