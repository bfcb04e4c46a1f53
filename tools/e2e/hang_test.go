package e2e

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

// demoRuns is how many times TestDefaultDemo boots the default demo in a
// row: it hung in 6 of 6 runs on a loaded 2-core machine (issue 9), and
// the bound on port exits below fails on its cause at any speed.
const demoRuns = 2

// maxDemoIOExits bounds the port I/O exits one demo guest may take from
// start to power-off. Each exit is a round trip through two hypervisors
// under nested TCG; the demo guests take ~1300 each. With the PCI bus
// range 0-255 in the firmware tables they took 16320 more (Linux probing
// 255 empty peer buses through conf1), which is what made the default demo
// appear hung: this bound fails on that, whatever the machine's speed.
const maxDemoIOExits = 8000

var exitsRE = regexp.MustCompile(`^(demo\d)\| hyperroot vmm: demo\d: exits (\d+) \(io (\d+), mmio (\d+)\)$`)

// TestDefaultDemo boots the appliance with no configuration (the two
// built-in demo VMs, one with 2 vCPUs) several times in a row: each run
// must pass, and no guest may take more port exits than a boot needs.
// A run that hangs hits the appliance's own timeout, whose dump of every
// VMM's vCPUs is in the test log.
func TestDefaultDemo(t *testing.T) {
	parallel(t)
	for i := 1; i <= demoRuns; i++ {
		t.Run(fmt.Sprintf("run%d", i), func(t *testing.T) {
			testbed(t, func(t testing.TB) {
				began := time.Now()
				m := start(t, qemu.Options{Oneshot: true})
				r := m.Wait()
				if !r.OK() {
					t.Fatalf("appliance: %s", r.Why())
				}
				seen := 0
				for _, l := range r.Lines {
					g := exitsRE.FindStringSubmatch(l)
					if g == nil {
						continue
					}
					seen++
					io, _ := strconv.Atoi(g[3])
					t.Logf("%s: %s exits, io %s, mmio %s", g[1], g[2], g[3], g[4])
					if io > maxDemoIOExits {
						t.Errorf("%s took %d port exits, want at most %d (a PCI bus scan?)", g[1], io, maxDemoIOExits)
					}
				}
				if seen != 2 {
					t.Errorf("%d VMMs reported their exits, want 2", seen)
				}
				t.Logf("run %d took %s", i, time.Since(began).Round(time.Second))
			})
		})
	}
}

// spinKernel is a bzImage that ParseBzImage and the loader accept whose
// 64-bit entry (load address 1 MiB + 0x200) disables interrupts and jumps
// to itself: a guest that never exits on its own, nor lets its APs start.
func spinKernel() []byte {
	const setupLen, codeLen = 2 * 512, 4096
	img := make([]byte, setupLen+codeLen)
	le := binary.LittleEndian
	img[0x1F1] = 1                                       // setup_sects
	le.PutUint32(img[0x1F4:], codeLen/16)                // syssize
	le.PutUint16(img[0x1FE:], 0xAA55)                    // boot_flag
	img[0x200], img[0x201] = 0xEB, 0x6A                  // jump over the header (ends at 0x26C)
	copy(img[0x202:], "HdrS")                            //
	le.PutUint16(img[0x206:], 0x020F)                    // protocol 2.15
	img[0x211] = 0x01                                    // loadflags: LOADED_HIGH
	le.PutUint32(img[0x22C:], 0x7FFFFFFF)                // initrd_addr_max
	le.PutUint32(img[0x230:], 2<<20)                     // kernel_alignment
	img[0x234] = 1                                       // relocatable
	le.PutUint16(img[0x236:], 0x3)                       // xloadflags: XLF_KERNEL_64, above 4G
	le.PutUint32(img[0x238:], 0x7FF)                     // cmdline_size
	le.PutUint32(img[0x248:], 0x400)                     // payload_offset
	le.PutUint32(img[0x24C:], 0x100)                     // payload_length
	le.PutUint64(img[0x258:], 16<<20)                    // pref_address
	le.PutUint32(img[0x260:], 4<<20)                     // init_size
	copy(img[setupLen+0x200:], []byte{0xFA, 0xEB, 0xFE}) // cli; jmp $
	return img
}

// spinRIP is where spinKernel's vCPU 0 spins: the jmp after the cli;
// spinEntry is the cli, where it is until it has run its first
// instruction.
const (
	spinRIP   = "0x100201"
	spinEntry = "0x100200"
)

// TestDump: "dump <vm>" typed on the appliance console makes that VM's VMM
// print each vCPU's state, kicking it out of KVM_RUN to read it; and a
// oneshot run that hits hyperroot.timeout dumps every running VMM by itself
// before it fails and powers off. The guest spins with interrupts off, so
// the dump must name its RIP; its AP never got INIT, so it must show it
// waiting for one; it never set up its devices, whose lines say so.
func TestDump(t *testing.T) {
	parallel(t)
	testbed(t, func(t testing.TB) {
		overlay := t.TempDir()
		if err := os.MkdirAll(filepath.Join(overlay, "spin"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(overlay, "spin", "vmlinuz"), spinKernel(), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(overlay, "spin", "disk.img"), make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		// A spinning guest never takes its power button: its stop
		// timeout is what the power-off waits for, then it is killed.
		cfg := writeConfig(t, `  - name: spin
    cpus: 2
    memory: 64M
    kernel: /spin/vmlinuz
    restart: never
    stop_timeout: 5s
    disks:
      - {path: /spin/disk.img}
`)
		pr, pw := io.Pipe()
		defer pw.Close()
		host := 90 * time.Second
		m := start(t, qemu.Options{Config: cfg, Overlay: overlay, Oneshot: true, Stdin: pr, Timeout: host})
		expect(t, m, `hyperroot: vm spin started pid=`)
		// A dump asked for before the vCPUs run says so (no machine
		// yet, or no thread for a vCPU), so wait for the VMM's own word
		// that every vCPU has entered KVM_RUN: on a loaded machine
		// that took more than 20 dump round trips (CI, 10 s).
		expect(t, m, `^spin\| hyperroot vmm: spin: 2 vCPUs running `)
		fmt.Fprintln(pw, "dump spin")
		// Entered KVM_RUN is not yet run: on a loaded machine (CI) this
		// first dump found vCPU 0 at the kernel's entry, before its cli
		// ("exits=2"). The dump at the timeout, a minute on, must find it
		// in its loop.
		checkDump(t, readDump(t, m, "spin"), `(`+spinEntry+`|`+spinRIP+`)`)
		// No VM exits, so the run ends at hyperroot.timeout.
		expect(t, m, `hyperroot: timeout: \S+ since boot, still running: spin; dumping their VMMs$`)
		checkDump(t, readDump(t, m, "spin"), spinRIP)
		expect(t, m, regexp.QuoteMeta(fmt.Sprintf("hyperroot: result fail errors=0 vms=spin timeout=%s", qemu.ApplianceTimeout(host))))
		expect(t, m, `hyperroot: powering off: timeout$`)
		expect(t, m, `hyperroot: vm spin did not stop within 5s: killing it$`)
		r := m.Wait()
		if r.TimedOut || !r.PowerOff || !strings.HasPrefix(r.Verdict, "fail") {
			t.Fatalf("appliance: verdict %q poweroff %v timed out %v; want a failed verdict and a clean poweroff before the host's timeout", r.Verdict, r.PowerOff, r.TimedOut)
		}
	})
}

// readDump reads the lines of VM name's next dump from the console, up
// to its end line, without their prefix.
func readDump(t testing.TB, m *qemu.Machine, name string) []string {
	t.Helper()
	lineRE := regexp.MustCompile(`^` + regexp.QuoteMeta(name) + `\| hyperroot vmm: dump: `)
	var lines []string
	for {
		l, err := m.Expect(lineRE, waitCap)
		if err != nil {
			t.Fatal(err)
		}
		l = lineRE.ReplaceAllString(l, "")
		if l == "end" {
			return lines
		}
		lines = append(lines, l)
	}
}

// checkDump checks one dump of the running spin VM, whose vCPU 0 is at
// rip (a regexp).
func checkDump(t testing.TB, lines []string, rip string) {
	t.Helper()
	for _, want := range []string{
		`^2 vCPUs$`,
		`^vcpu 0: thread \d+ was in KVM_RUN`,
		`^vcpu 0: mp_state runnable$`,
		`^vcpu 0: rip=` + rip + ` .*\(interrupts off\)`,
		`^vcpu 0: lapic id=0 `,
		`^vcpu 0: events `,
		`^vcpu 1: thread \d+ was in KVM_RUN`,
		`^vcpu 1: mp_state uninitialized \(an AP waiting for INIT\)$`,
		// The devices, which the spinning guest never set up: no
		// status, no vectors, no kicks, no requests.
		`^virtio-rng: status=0x0 isr=0x0$`,
		`^virtio-rng: queue 0: no vector, notify eventfd=0$`,
		`^disk 0: virtio-blk: queue 1: no vector, notify eventfd=0$`,
		`^disk 0: virtio-blk: queue 1: not activated$`,
		`^disk 0: no request finished$`,
		`^disk 0: virtio-blk: backend io_uring: 0 of \d+ slots in flight, 0 SQEs not taken by the kernel, 0 CQEs not reaped, refused=false overflow=false eventfd=0$`,
		`^goroutine \d+ `,
		`^main\.vmmMain\(`,
	} {
		if !hasLine(lines, want) {
			t.Errorf("dump lacks %q:\n%s", want, strings.Join(lines, "\n"))
		}
	}
}
