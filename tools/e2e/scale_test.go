package e2e

import (
	"fmt"
	"io"
	"regexp"
	"strconv"
	"testing"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestTwoTiBGuest: the guest memory layout holds 2 TiB. A VM configured
// with 2T boots (its RAM is a sparse memfd: the appliance has 2 GiB) with
// mem=256M on its command line, so that its kernel uses only that; the
// guest reads the firmware's memory map, as the VMM's e820 table gave it,
// which must cover 2 TiB of RAM, then writes and reads back the last page
// below 2 TiB through /dev/mem: memory the guest kernel was told not to
// use, so nothing else there touches it.
func TestTwoTiBGuest(t *testing.T) {
	parallel(t)
	const size = 2 << 40
	probe := strconv.FormatUint(size-4096, 16)
	testbed(t, func(t testing.TB) {
		cfg := configFile(t, "vms:\n"+loadVM("big", "memmap", 1, "2T", "", "mem=256M", "hyperroot.probe=0x"+probe))
		// 48 physical address bits, as a server CPU has: TCG's default
		// 40 would cap the appliance's KVM at 1 TiB of guest RAM.
		m := start(t, qemu.Options{Config: cfg, Oneshot: true, PhysBits: 48})
		expect(t, m, `hyperroot: vm big started pid=\d+ cpus=1 memory=2T`)
		l := expect(t, m, `^big\| guest: memmap ram=\d+$`)
		ram, _ := strconv.ParseUint(l[len("big| guest: memmap ram="):], 10, 64)
		expect(t, m, `^big\| guest: memmap probe 0x`+probe+` ok$`)
		r := m.Wait()
		if !r.OK() {
			t.Fatalf("appliance verdict %q", r.Verdict)
		}
		// The VMM keeps the legacy hole below 1 MiB (and nothing
		// more) out of the guest's RAM.
		if ram > size || ram < size-(1<<20) {
			t.Errorf("the memory map holds %d bytes of RAM, want 2 TiB less at most the 1 MiB legacy area", ram)
		}
		top := regexp.MustCompile(`^big\| guest: memmap 0x([0-9a-f]+)-0x([0-9a-f]+) System RAM$`)
		var end uint64
		for _, l := range r.Lines {
			if m := top.FindStringSubmatch(l); m != nil {
				e, _ := strconv.ParseUint(m[2], 16, 64)
				end = max(end, e)
			}
		}
		if end < size-1 {
			t.Errorf("the highest RAM ends at %#x, below 2 TiB", end)
		}
		t.Logf("2 TiB guest: %d bytes of RAM in its memory map, up to %#x; page %#x written and read back", ram, end, uint64(size-4096))
	})
}

// maxVCPUs is KVM's limit per VM in the appliance's kernel (Debian's 6.1:
// KVM_MAX_VCPUS), which the appliance prints on its kvm line.
const maxVCPUs = 1024

// TestMaxVCPUs: the VMM creates and runs a VM of KVM's maximum of vCPUs,
// 1024, beside a 1-vCPU VM of the same guest, and reports how long the
// big one took to start and what each vCPU costs. The guest boots on its
// first CPU (maxcpus=1: under nested TCG a kernel bringing up 1023 CPUs
// would take hours, see TestGuestShapes) and its init then brings up
// three more, the highest among them: CPU 1023, whose x2APIC id only an
// x2APIC MADT entry and INIT/SIPI through the x2APIC ICR reach; the rest
// wait in KVM_RUN for an INIT that does not come, each on its own thread.
// What a vCPU costs is the difference between the two VMMs' cgroup memory
// beyond guest RAM (memory.current less the memfd's shmem: the VMM's heap
// and stacks, KVM's vCPU structures, thread stacks), per extra vCPU.
//
// Its appliance has a host core to itself (ownCore): 1024 vCPU threads in
// a 1-vCPU emulated appliance starve when a 2-vCPU appliance shares the
// host's two cores. In two full runs on 2026-12-04 its machine took 49 and
// 57 s to build (15-20 s alone) and the guest's onlined CPUs soft-locked
// for 23-50 s while another test's retries ran beside it; alone the same
// commit passed in 117 s. Beside another 1-vCPU appliance each has a core.
func TestMaxVCPUs(t *testing.T) {
	parallelAs(t, ownCore)
	testbed(t, func(t testing.TB) {
		pr, pw := io.Pipe()
		defer pw.Close()
		cfg := configFile(t, "vms:\n"+
			loadVM("one", "echo", 1, "1G", "", "maxcpus=1")+
			loadVM("max", "echo", maxVCPUs, "1G", "", "maxcpus=1",
				fmt.Sprintf("hyperroot.online=1,%d,%d", maxVCPUs/2, maxVCPUs-1), fmt.Sprintf("hyperroot.rngcpu=%d", maxVCPUs-1)))
		o := qemu.Options{Config: cfg, Oneshot: true, Stdin: pr}
		if qemu.HostAccel() == "tcg" {
			o.CPUs = 1 // as TestGuestShapes: multi-threaded TCG and many APs
		}
		m := start(t, o)
		kvm := expect(t, m, `hyperroot: kvm: ok .* max-vcpus=\d+( nx-huge-pages=\S+)?$`)
		if n := qosField(t, kvm, "max-vcpus"); n != maxVCPUs {
			t.Fatalf("the appliance's KVM allows %d vCPUs per VM; this test runs %d", n, maxVCPUs)
		}
		l := seen(t, m, fmt.Sprintf(`^max\| hyperroot vmm: max: %d vCPUs running \S+ after start \(machine built in \S+: kvm=\S+ memory=\S+ acpi=\S+ firmware=\S+ load=\S+ devices=\S+ vcpus=\S+\)$`, maxVCPUs))
		t.Logf("VMM: %s", l[len("max| hyperroot vmm: max: "):])
		seen(t, m, fmt.Sprintf(`^max\| guest: online 3 CPUs brought up in \d+ ms \(present %d\)$`, maxVCPUs))
		seen(t, m, `^max\| guest: booted nproc=4 `)
		// An MSI reaches the highest vCPU: the entropy device's, steered
		// there, through the extended destination id.
		seen(t, m, fmt.Sprintf(`^max\| guest: hwrng \S+ read=512 irq=PCI-MSI cpu%d=[1-9]\d*$`, maxVCPUs-1))
		seen(t, m, `^one\| guest: booted nproc=1 `)
		seen(t, m, `^one\| guest: action echo$`)
		seen(t, m, `^max\| guest: action echo$`)
		overhead := func(name string) (beyond, current uint64) {
			fmt.Fprintln(pw, "qos "+name)
			l := expect(t, m, `hyperroot: qos `+name+` cpu\.usage=\S+ memory\.current=\d+ .*memory\.stat\.shmem=\d+`)
			current = qosField(t, l, "memory.current")
			return current - qosField(t, l, "memory.stat.shmem"), current
		}
		one, oneAll := overhead("one")
		big, bigAll := overhead("max")
		per := (float64(big) - float64(one)) / (maxVCPUs - 1)
		t.Logf("VMM memory beyond guest RAM: 1 vCPU %d KiB (of %d KiB), %d vCPUs %d KiB (of %d KiB): %.1f KiB per vCPU",
			one>>10, oneAll>>10, maxVCPUs, big>>10, bigAll>>10, per/1024)
		// A vCPU is KVM's structures (a few pages), its thread's kernel
		// stack (16 KiB) and the Go runtime's M: tens of KiB. A quarter
		// of a megabyte per vCPU would be a leak or a per-vCPU buffer that
		// has no business there.
		if per <= 0 || per > 256<<10 {
			t.Errorf("%.1f KiB per vCPU beyond guest RAM, want more than 0 and at most 256 KiB", per/1024)
		}
		fmt.Fprintln(pw, "@one poweroff")
		fmt.Fprintln(pw, "@max poweroff")
		if r := m.Wait(); !r.OK() {
			t.Fatalf("appliance: %s", r.Why())
		}
	})
}

// qosField is the number after "<key>=" in a console line (qos, kvm).
func qosField(t testing.TB, line, key string) uint64 {
	t.Helper()
	m := regexp.MustCompile(`\b` + regexp.QuoteMeta(key) + `=(\d+)\b`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no %s= in %q", key, line)
	}
	n, _ := strconv.ParseUint(m[1], 10, 64)
	return n
}
