#!/usr/bin/env bash
# build.sh — build, run and test the hyperroot appliance. Outputs go under out/.
#
#   ./build.sh deps    install what the build and tests need (as root; else print the command)
#   ./build.sh build   build out/image/{vmlinuz,initramfs.cpio,board.yaml} (default)
#   ./build.sh run     build, then boot the image in QEMU with the console here
#                      (runner flags follow: -memory 4G -cpus 4 -append ... -config F -overlay DIR -oneshot)
#   ./build.sh test    deps, build, go vet, gofmt, go mod tidy check, race detector, unit tests, KVM
#                      tests (on the host's /dev/kvm, else in the appliance), end-to-end tests under QEMU
#   ./build.sh bench   Go micro-benchmarks, then the boot benchmark (hyperroot plain and jailed vs gokvm, QEMU pc and microvm), the disk
#                      benchmark (hyperroot io_uring/pool vs QEMU) and the network benchmark (hyperroot
#                      switch vs QEMU + tap + Linux bridge) and the Debian boot benchmark (a stock
#                      Debian 12 from a qcow2 clone to systemd's multi-user target, vs QEMU) in the appliance;
#                      every figure in one table: out/bench/results.json and results.md (tools/benchreport)
#   ./build.sh pxe     build, and write out/pxe/{vmlinuz,initramfs.cpio,boot.ipxe} to serve for network boot
#                      (docs/PXE.md)
#   ./build.sh clean   remove out/ (keeps the download cache out/cache/debs; clean all removes it too)
#
# Environment: BOARD (default qemu), OUT (default out).
set -euo pipefail
cd "$(dirname "$0")"

BOARD=${BOARD:-qemu}
OUT=${OUT:-out}
VERSION=$(git describe --always --dirty 2>/dev/null || echo dev)
GO_MIN=1.26

# step NAME CMD...: run one step, say what it does and how long it took;
# on failure name the step and stop.
step() {
	local name=$1 start=$SECONDS
	shift
	echo "==> $name"
	if ! "$@"; then
		echo "build.sh: step '$name' failed (see above)" >&2
		exit 1
	fi
	echo "    ($name: $((SECONDS - start))s)"
}

# Debian packages the build and the tests need, by the command that shows
# each is there.
declare -A PKGS=(
	[qemu-system-x86_64]=qemu-system-x86
	[depmod]=kmod
	[dpkg-deb]=dpkg
	[apt-get]=apt
	[iasl]=acpica-tools
	[mkfs.ext4]=e2fsprogs
	[debugfs]=e2fsprogs
	[checkpolicy]=checkpolicy
	[update-ca-certificates]=ca-certificates
	[chromium]=chromium
	[qemu-img]=qemu-utils
	[mkfs.vfat]=dosfstools
	[mcopy]=mtools
	[mkfs.xfs]=xfsprogs
	[mkfs.btrfs]=btrfs-progs
	[mmdebstrap]=mmdebstrap
)

deps() {
	if ! command -v go >/dev/null; then
		echo "build.sh: go not found: install Go >= $GO_MIN from https://go.dev/dl and put it on PATH" >&2
		return 1
	fi
	local gov
	gov=$(go env GOVERSION | sed 's/^go//')
	if [ "$(printf '%s\n%s\n' "$GO_MIN" "$gov" | sort -V | head -1)" != "$GO_MIN" ]; then
		echo "build.sh: Go $gov is too old: need >= $GO_MIN" >&2
		return 1
	fi
	local missing=() cmd
	for cmd in "${!PKGS[@]}"; do
		command -v "$cmd" >/dev/null || missing+=("${PKGS[$cmd]}")
	done
	# vmm/vfio's test checks its ioctl numbers against the kernel's header.
	[ -e /usr/include/linux/vfio.h ] || missing+=(linux-libc-dev)
	if [ ${#missing[@]} -gt 0 ]; then
		if [ "$(id -u)" != 0 ]; then
			echo "build.sh: missing packages; run: sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
			return 1
		fi
		echo "    installing ${missing[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
	fi
	# apt needs package lists to resolve the kernel package.
	if ! apt-cache show --no-all-versions linux-image-cloud-amd64 >/dev/null 2>&1; then
		if [ "$(id -u)" = 0 ]; then
			apt-get update -qq
		else
			echo "build.sh: apt has no package lists; run: sudo apt-get update" >&2
			return 1
		fi
	fi
	go mod download
	fetch_qemu
	echo "    go $(go env GOVERSION), $("$HYPERROOT_QEMU" --version | head -1) ($HYPERROOT_QEMU)"
}

# The QEMU that boots the appliance (./build.sh run, the tests, the
# benchmarks). Bookworm's own QEMU 7.2 leaves the appliance's timer
# interrupt pending for minutes while its one CPU runs a nested guest
# (docs/TESTING.md, "The stalled guests"); QEMU 10 from bookworm-backports
# does not. It is unpacked under $OUT/cache/qemu with a private apt
# configuration, leaving the system's apt sources alone; its libraries are
# those bookworm's qemu-system-x86 (installed above) brings. HYPERROOT_QEMU
# set by the caller wins.
QEMU_SUITE=bookworm-backports
QEMU_DIR=$OUT/cache/qemu
export HYPERROOT_QEMU=${HYPERROOT_QEMU:-$PWD/$QEMU_DIR/bin/qemu-system-x86_64}

fetch_qemu() {
	[ "$HYPERROOT_QEMU" = "$PWD/$QEMU_DIR/bin/qemu-system-x86_64" ] || return 0
	local apt=$QEMU_DIR/apt debs=$QEMU_DIR/debs root=$QEMU_DIR/root f missing
	if [ ! -e "$root/usr/lib/x86_64-linux-gnu/qemu/ui-opengl.so" ]; then
		rm -rf "$QEMU_DIR"
		mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$debs" "$root"
		echo "deb http://deb.debian.org/debian $QEMU_SUITE main" >"$apt/sources.list"
		local opts=(-o "Dir::Etc::sourcelist=$PWD/$apt/sources.list" -o Dir::Etc::sourceparts=/dev/null
			-o "Dir::State::Lists=$PWD/$apt/lists" -o "Dir::Cache=$PWD/$apt" -o APT::Sandbox::User=root)
		echo "    fetching QEMU from $QEMU_SUITE into $QEMU_DIR"
		apt-get "${opts[@]}" -qq update || return 1
		# Its loadable modules too (common, opengl, spice): QEMU also looks
		# for modules where bookworm's QEMU keeps its own, and complains at
		# every start about each one it finds there from the other build.
		(cd "$debs" && apt-get "${opts[@]}" -qq download qemu-system-x86 qemu-system-common qemu-system-data \
			qemu-system-modules-opengl qemu-system-modules-spice seabios) || return 1
		for f in "$debs"/*.deb; do dpkg-deb -x "$f" "$root" || return 1; done
	fi
	missing=$(ldd "$root/usr/bin/qemu-system-x86_64" | grep 'not found' || true)
	if [ -n "$missing" ]; then
		echo "build.sh: QEMU from $QEMU_SUITE lacks libraries: $missing" >&2
		return 1
	fi
	# -L: its own SeaBIOS and option ROMs, not the system's older ones
	# (with bookworm's SeaBIOS 1.16.2, QEMU 10 takes ~30 s to load the
	# kernel and initramfs).
	mkdir -p "$QEMU_DIR/bin"
	cat >"$QEMU_DIR/bin/qemu-system-x86_64" <<-'EOF'
	#!/bin/sh
	root=$(dirname "$(readlink -f "$0")")/../root
	export QEMU_MODULE_DIR="$root/usr/lib/x86_64-linux-gnu/qemu"
	exec "$root/usr/bin/qemu-system-x86_64" -L "$root/usr/share/seabios" -L "$root/usr/share/qemu" "$@"
	EOF
	chmod +x "$QEMU_DIR/bin/qemu-system-x86_64"
}

build() {
	go run ./tools/mkimage -board "$BOARD" -out "$OUT" -version "$VERSION"
}

# The Debian 12 system image the tests boot as a stock distribution's disk
# (tools/mkdebian: mmdebstrap from Debian's packages), made once and kept
# until its recipe changes, outside the clone as Go keeps its module cache:
# a clean clone (CI's) finds it made and skips the two minutes of
# mmdebstrap. HYPERROOT_CACHE names another directory (the same rule as
# internal/disktest.DebianDir, which the test and mkdebian use).
CACHE=${HYPERROOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hyperroot}
export HYPERROOT_DEBIAN_IMAGE=${HYPERROOT_DEBIAN_IMAGE:-$CACHE/debian/debian-12.qcow2}
debian_image() { go run ./tools/mkdebian -out "$(dirname "$HYPERROOT_DEBIAN_IMAGE")" >/dev/null; }

# debian_image_start / debian_image_wait: make the image in the background
# while the race detector's step runs (mmdebstrap waits on the disk and
# dpkg more than on the CPU).
DEBIAN_PID=
debian_image_start() {
	mkdir -p "$OUT"
	debian_image >"$OUT/mkdebian.log" 2>&1 &
	DEBIAN_PID=$!
}
debian_image_wait() {
	wait "$DEBIAN_PID" && return
	cat "$OUT/mkdebian.log" >&2
	return 1
}

check_fmt() {
	local bad
	bad=$(find . -name '*.go' -not -path './out/*' -print0 | xargs -0 gofmt -l)
	[ -z "$bad" ] || { echo "not gofmt'ed: $bad" >&2; return 1; }
}

# kvm_usable: the host has a working /dev/kvm (a KVM character device that
# answers KVM_GET_API_VERSION) that is not PVM's (too slow for the Linux
# guests the KVM tests boot); it says why not otherwise.
kvm_usable() { go run ./tools/kvmtest probe; }

# unit_packages: the packages the race step has not tested already (its
# packages' tests run once, under the race detector): the end-to-end tests,
# the KVM tests' packages, those whose tests start QEMU, vmm/seccomp. Running
# the others again without -race would only take CPU from the end-to-end
# tests' appliances, whose first tests measure rates.
unit_packages() { go list ./... | grep -vxF -f <(tools/race-packages.sh); }

unit_and_e2e() {
	# HYPERROOT_STRICT=1: tests fail, never skip, when something they need is missing.
	export HYPERROOT_STRICT=1 HYPERROOT_IMAGE="$PWD/$OUT/image"
	testreport_build || return 1
	if kvm_usable; then
		echo "    /dev/kvm usable: KVM tests run on the host, and again in the appliance (tools/e2e TestKVMInAppliance)"
		# CGO_ENABLED=0: the tests that run their own binary as a VMM do so
		# under the VMM's seccomp filters, which allow what the static
		# product binary calls; a cgo binary's thread start calls mprotect
		# (its stacks' guard pages), which they kill.
		CGO_ENABLED=0 go test -json -count=1 -timeout 40m $(unit_packages) | testreport e2e
		return
	fi
	# No KVM on the host: the tests that need it run inside the appliance
	# under QEMU (tools/e2e TestKVMInAppliance); the rest of their packages'
	# tests ran in the race step (with -skip, rather than skipping).
	local list dir re mod kvmpkgs=()
	list=$(go run ./tools/kvmtest list) || return 1
	mod=$(go list -m)
	while read -r dir re; do
		[ -n "$dir" ] && kvmpkgs+=("$mod/$dir")
	done <<<"$list"
	echo "    no usable /dev/kvm on the host: the KVM tests of ${kvmpkgs[*]#$mod/} run in the appliance (tools/e2e TestKVMInAppliance)"
	go test -json -count=1 -timeout 40m $(unit_packages | grep -vxF -f <(printf '%s\n' "${kvmpkgs[@]}")) | testreport e2e
}

# testreport: go test -json in, the usual terse output out, and at the end a
# summary of what failed or hung and of the slow tests (tools/testreport), so
# that the tail of a CI log says which test to look at; every test's time
# goes to $OUT/test-times-<step>.tsv (slowest first), for planning the budget.
# Under a failed test's summary line: its VMMs' dumps of their vCPUs (state,
# registers, where each stopped), panics and the appliance's errors, which
# a console of thousands of lines would otherwise bury far above the tail.
TESTREPORT=$OUT/bin/testreport
testreport_build() { go build -o "$TESTREPORT" ./tools/testreport; }
testreport() {
	"$TESTREPORT" -slow 60s -note "spoilt by the test bed" -times "$OUT/test-times-$1.tsv" \
		-key 'dump: (vcpu [0-9]+|vm[: ]|kvm counts|serial:)|panic:|Kernel panic|fatal error:|hyperroot: error:|I/O .*timeout|resetting controller'
}

race() {
	testreport_build || return 1
	# The packages with KVM tests (init, vmm/kvm, vmm/machine) have other
	# tests too, PID 1's goroutines among them: those run here, the KVM
	# ones left out as on a host without KVM.
	local dir re status failed=0
	status=$(mktemp)
	{
		go test -json -race -count=1 -timeout 20m $(tools/race-packages.sh) || echo "go test: $?" >>"$status"
		while read -r dir re; do
			[ -n "$dir" ] || continue
			go test -json -race -count=1 -timeout 10m -skip "$re" "./$dir" || echo "go test $dir: $?" >>"$status"
		done < <(go run ./tools/kvmtest list)
	} | testreport race || failed=1
	[ -s "$status" ] && failed=1
	rm -f "$status"
	return $failed
}

# bench_silence: every benchmark round prints a line within its own
# timeout (10 minutes at most, the disk's), so a console quiet for 15
# minutes is a frozen appliance (a lost timer interrupt under TCG): the runner
# asks for a dump and ends the run instead of waiting out its timeout.
bench_silence=15m

# bench_run NAME TIMEOUT: boot the bench image, in which PID 1 runs the
# benchmark program (tools/bench) on its own configuration (no other VMs),
# and show its figures.
bench_run() {
	go run ./tools/runner -image "$OUT/bench/image" -oneshot -timeout "$2" -silence "$bench_silence" \
		-append "hyperroot.config=/bench/config.yaml hyperroot.run=/bench/hyperroot-bench,$1" |
		tee "$OUT/bench/$1.log" | grep --line-buffered -E 'bench:|runner:'
}

bench_boot() { bench_run boot 20m; }
bench_bootlog() { bench_run bootlog 20m; }

# bench_debian: the Debian boot benchmark's appliance gets a data disk
# holding the Debian image as a base (tools/bench/debian.go), and one vCPU:
# in a 2-vCPU one (multi-threaded TCG) the Debian guest triple-faulted
# (README, Known issues), as in the Debian test.
bench_debian() {
	local tree=$OUT/bench/debian-tree data=$OUT/bench/debian-data.img
	rm -rf "$tree" "$data"
	mkdir -p "$tree/bases"
	cp --reflink=auto --sparse=always "$HYPERROOT_DEBIAN_IMAGE" "$tree/bases/debian-12.qcow2" || return 1
	mkfs.ext4 -q -F -L hyperroot-data -d "$tree" "$data" 4G >/dev/null || return 1
	rm -rf "$tree"
	go run ./tools/runner -image "$OUT/bench/image" -oneshot -silence "$bench_silence" -timeout 60m -memory 3G -cpus 1 -drive "$data" \
		-append "hyperroot.config=/bench/config.yaml hyperroot.run=/bench/hyperroot-bench,debian" |
		tee "$OUT/bench/debian.log" | grep --line-buffered -E 'bench:|runner:'
}
bench_disk() { bench_run disk 40m; }

# bench_passthrough: an appliance with an IOMMU and an SR-IOV NVMe
# controller with two 256 MiB namespaces (tools/bench/passthrough.go).
bench_passthrough() {
	local ns1=$OUT/bench/ns1.img ns2=$OUT/bench/ns2.img
	rm -f "$ns1" "$ns2"
	truncate -s 256M "$ns1" "$ns2" || return 1
	go run ./tools/runner -image "$OUT/bench/image" -oneshot -silence "$bench_silence" -timeout 40m -iommu -nvme "serial=bench,vfs=1,ns=$ns1:$ns2" \
		-append "hyperroot.config=/bench/config.yaml hyperroot.run=/bench/hyperroot-bench,passthrough" |
		tee "$OUT/bench/passthrough.log" | grep --line-buffered -E 'bench:|runner:'
	rm -f "$ns1" "$ns2"
}
bench_net() { bench_run net 40m; }

# bench_fleet: the appliance (the bench image: the product plus the
# peers) from power-on to 8 small VMs at their init, on the host's clock
# (tools/fleet).
bench_fleet() { go run ./tools/fleet -image "$OUT/bench/image" -vms 8 | tee "$OUT/bench/fleet.log"; }

case "${1:-build}" in
deps)
	step deps deps
	;;
build)
	step deps deps
	step "build image (board $BOARD)" build
	;;
run)
	shift || true
	step deps deps
	step "build image (board $BOARD)" build
	exec go run ./tools/runner -image "$OUT/image" "$@"
	;;
test)
	step deps deps
	step "build image (board $BOARD)" build
	step "go vet" go vet ./...
	step "gofmt" check_fmt
	step "go mod tidy leaves go.mod and go.sum unchanged" tools/check-tidy.sh
	step "Debian 12 test image (cached; made in the background during the next step)" debian_image_start
	step "race detector (tests that need neither KVM nor QEMU)" race
	step "Debian 12 test image ready" debian_image_wait
	step "unit, host-KVM and end-to-end tests" unit_and_e2e
	;;
pxe)
	step deps deps
	step "build image and network boot files (board $BOARD)" go run ./tools/mkimage -board "$BOARD" -out "$OUT" -version "$VERSION" -pxe
	;;
bench)
	step deps deps
	# Figures of an earlier run must not reach this run's table.
	rm -f "$OUT"/bench/{boot,bootlog,disk,passthrough,net,fleet,debian}.log "$OUT"/bench/results.{json,md}
	step "Go micro-benchmarks" go test -run '^$' -bench . -benchmem ./...
	step "build bench image (adds the benchmark program and the peer VMMs gokvm and QEMU)" go run ./tools/mkimage -board "$BOARD" -out "$OUT/bench" -version "$VERSION" -bench
	if ! kvm_usable; then
		# The micro-benchmarks that need KVM (vmm/kvm IOExit ...), which skipped above, run here.
		step "KVM micro-benchmarks in the appliance (no usable /dev/kvm on the host)" go run ./tools/kvmtest appliance -bench -image "$OUT/bench/image"
	fi
	step "boot benchmark: hyperroot (plain and jailed) vs gokvm and QEMU (pc, microvm) in one appliance run" bench_boot
	step "boot log: where the guest kernel's time goes under hyperroot and QEMU pc (initcall_debug)" bench_bootlog
	step "disk benchmark: hyperroot (io_uring, pool) vs QEMU, in-guest fio-like tests, in one appliance run" bench_disk
	step "passthrough benchmark: an NVMe VF passed through vs the same controller's namespace as hyperroot's virtio-blk, in one appliance run" bench_passthrough
	step "network benchmark: VM-to-VM TCP, hyperroot switch vs QEMU + tap + Linux bridge, in one appliance run" bench_net
	step "fleet: appliance power-on to 8 small VMs at init" bench_fleet
	step "Debian 12 test image (cached)" debian_image
	step "Debian boot benchmark: from a qcow2 clone to systemd's multi-user target, hyperroot vs QEMU, in one appliance run" bench_debian
	step "results: every figure in one table ($OUT/bench/results.json, results.md)" \
		go run ./tools/benchreport -out "$OUT/bench" "$OUT"/bench/{boot,bootlog,disk,passthrough,net,fleet,debian}.log
	;;
clean)
	if [ "${2:-}" = all ]; then rm -rf "$OUT"; else find "$OUT" -mindepth 1 -maxdepth 1 ! -name cache -exec rm -rf {} + 2>/dev/null || true; fi
	;;
*)
	sed -n '2,20p' "$0" >&2
	exit 2
	;;
esac
