#!/usr/bin/env bash
# fuzz-all.sh — run every fuzz target of the module for a while and record
# the outcome, one line per target.
#
# `go test` replays the committed corpora (testdata/fuzz/) at every run;
# this is the other half: new inputs, for as long as one can afford. It is
# not part of `./build.sh test` (hours of CPU); docs/TESTING.md records the
# last campaign.
#
# Usage:  tools/fuzz-all.sh [-time 10m] [-lanes 2] [-results FILE] [-nice N] [PATTERN]
#   -time     how long each target fuzzes (go test -fuzztime)
#   -lanes    how many targets fuzz at once, each with one worker (-parallel 1),
#             so a lane is one core's worth
#   -results  where the result lines go (default out/fuzz/results.tsv); a target
#             that already has a line there is skipped, so an interrupted
#             campaign resumes where it stopped
#   -nice     run the fuzzers at this niceness (default 0); 19 lets a machine
#             fuzz in the background of other work
#   PATTERN   only targets whose "package Target" matches this extended regexp
#
# A result line: date, package, target, fuzz time, executions, new corpus
# entries, and "ok" or "FAIL <file>" (the failing input go test wrote under
# the package's testdata/fuzz/, to commit with the fix). Each target's whole
# output is kept in out/fuzz/<package>.<Target>.log.
set -euo pipefail
cd "$(dirname "$0")/.."

time=10m lanes=2 results=out/fuzz/results.tsv niceness=0 pattern=.
while [ $# -gt 0 ]; do
	case $1 in
	-time) time=$2; shift 2 ;;
	-lanes) lanes=$2; shift 2 ;;
	-results) results=$2; shift 2 ;;
	-nice) niceness=$2; shift 2 ;;
	-*) echo "fuzz-all: unknown flag $1" >&2; exit 2 ;;
	*) pattern=$1; shift ;;
	esac
done
mkdir -p "$(dirname "$results")" out/fuzz
touch "$results"

# The targets, "package Target" per line, from the test sources.
targets() {
	grep -rn --include='*_test.go' '^func Fuzz' . |
		sed -E 's#^\./##; s#/[^/]*_test\.go:[0-9]+:func (Fuzz[A-Za-z0-9_]*)\(.*# \1#' |
		sort | grep -E -- "$pattern" || true
}

# one PKG TARGET: fuzz one target and append its result line.
one() {
	local pkg=$1 target=$2 log
	log=out/fuzz/${pkg//\//_}.$target.log
	local status=ok
	if ! nice -n "$niceness" go test -run '^$' -fuzz "^$target\$" -fuzztime "$time" -parallel 1 "./$pkg" >"$log" 2>&1; then
		status="FAIL $(grep -o 'testdata/fuzz/[^ ]*' "$log" | tail -1)"
		[ "$status" = "FAIL " ] && status="FAIL (see $log)"
	fi
	# The last progress line says how many inputs ran.
	local last execs=? interesting=?
	last=$(grep 'fuzz: elapsed' "$log" | tail -1 || true)
	if [ -n "$last" ]; then
		execs=$(sed -E 's/.*execs: ([0-9]+).*/\1/' <<<"$last")
		interesting=$(sed -E 's/.*new interesting: ([0-9]+).*/\1/' <<<"$last")
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$pkg" "$target" "$time" "$execs" "$interesting" "$status" >>"$results"
	echo "fuzz-all: $pkg $target: $status (execs $execs)"
}

running=0
while read -r pkg target; do
	if awk -F'\t' -v p="$pkg" -v t="$target" '$2 == p && $3 == t { found = 1 } END { exit !found }' "$results"; then
		continue
	fi
	one "$pkg" "$target" &
	running=$((running + 1))
	if [ "$running" -ge "$lanes" ]; then
		wait -n || true
		running=$((running - 1))
	fi
done < <(targets)
wait
failed=$(awk -F'\t' '$7 != "ok"' "$results" | wc -l)
echo "fuzz-all: $(wc -l <"$results") targets recorded in $results, $failed failed"
[ "$failed" = 0 ]
