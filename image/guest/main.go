// Command guest is the init of the small test guest that the appliance
// image carries (/guest/initramfs.cpio): it reports what the guest sees
// (vCPUs, memory, clock) on its serial console and then does what
// hyperroot.guest=<action> on its kernel command line asks, so that the
// end-to-end tests can drive every way a VM ends.
//
// Actions: poweroff (default), reboot, panic, echo (answer each console line
// with "guest: echo <line>" until a line "poweroff"), wait (run until killed),
// and the virtio-blk actions of disk.go (disk-write, disk-verify,
// disk-fsync-then-hang, disk-rw-parallel, disk-ro, disk-iops) and the disk
// benchmark of diskbench.go (disk-bench, options in hyperroot.diskbench=),
// which may be chained with commas and take hyperroot.seed=<n>; they power
// off when done. The network actions are in net.go, the load actions (spin,
// fill) for the resource-control tests in load.go. With hyperroot.online=all
// it first brings every CPU the kernel left offline online (cpus.go).
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/powerkey"
)

func main() {
	holdStdio()
	for _, m := range []struct{ src, dst, typ string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.typ, 0, ""); err != nil && err != unix.EBUSY {
			fmt.Printf("guest: mount %s: %v\n", m.dst, err)
		}
	}
	loadModules()
	var cmdline []string
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		cmdline = strings.Fields(string(b))
	}
	hvcStdio(cmdline)
	reportCRNG(time.Now())
	// The VMM presses again every few seconds until the guest is off
	// (a press during boot is lost): the first press powers off, the
	// rest find it under way.
	var off sync.Once
	n, _ := powerkey.Watch(func() {
		off.Do(func() {
			fmt.Println("guest: power button pressed, powering off")
			unix.Sync()
			unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		})
	})
	onlineCPUs(cmdline) // cpus.go
	var up unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &up)
	fmt.Printf("guest: booted nproc=%d memtotal_kb=%d time=%d uptime=%d.%03d inputs=%d rtc=%s clocksource=%s virt=%s timer=%s\n",
		onlineCount(), memTotalKB(), time.Now().Unix(), up.Sec, up.Nsec/1e6, n,
		sysfsWord("/sys/class/rtc/rtc0/since_epoch"), sysfsWord("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
		virtFlag(), sysfsWord("/sys/devices/system/clockevents/clockevent0/current_device"))
	reportHWRNG(cmdline)
	action := "poweroff"
	var seed uint64
	for _, f := range cmdline {
		if v, ok := strings.CutPrefix(f, "hyperroot.guest="); ok {
			action = v
		}
		if v, ok := strings.CutPrefix(f, "hyperroot.seed="); ok {
			seed, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	fmt.Printf("guest: action %s\n", action)
	// Disk actions may be chained with commas; a failing one says why
	// and crashes the guest, so that its VM exits with a crash.
	for _, a := range strings.Split(action, ",") {
		f := diskActions[a]
		if f == nil {
			f = netActions[a] // net.go
		}
		if f == nil {
			f = loadActions[a] // load.go
		}
		if f != nil {
			if err := f(seed); err != nil {
				fmt.Printf("guest: FAIL %s: %v\n", a, err)
				panicKernel()
			}
		}
	}
	// What the guest does last is its chain's last action: "spew,echo"
	// writes, then echoes.
	actions := strings.Split(action, ",")
	switch actions[len(actions)-1] {
	case "echo":
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if line == "poweroff" {
				break
			}
			fmt.Printf("guest: echo %s\n", line)
		}
	case "wait":
		select {}
	case "reboot":
		unix.Sync()
		unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	case "panic":
		panicKernel()
	}
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

// panicKernel crashes the guest kernel (sysrq c), which pvpanic reports to
// the VMM.
func panicKernel() {
	os.WriteFile("/proc/sys/kernel/sysrq", []byte("1"), 0)
	os.WriteFile("/proc/sysrq-trigger", []byte("c"), 0)
}

// loadModules loads the modules named in /etc/modules (one per line, written
// by the image builder): pvpanic, so that a panic is reported to the VMM,
// and the ACPI button and evdev, so that the power button works.
func loadModules() {
	b, err := os.ReadFile("/etc/modules")
	if err != nil {
		return
	}
	for _, name := range strings.Fields(string(b)) {
		if err := kmodule.Probe(name, ""); err != nil {
			fmt.Printf("guest: module %s: %v\n", name, err)
		}
	}
}

// holdStdio fills whichever of descriptors 0-2 the kernel left closed (it
// could not open an initial console: hvc0 has no device until its driver
// is loaded) with a placeholder, so that no file this process opens, and
// none of the Go runtime's, takes their place before hvcStdio.
func holdStdio() {
	for fd := 0; fd <= 2; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == unix.EBADF {
			if got, err := unix.Open("/", unix.O_RDONLY, 0); err == nil && got != fd {
				unix.Dup2(got, fd)
				unix.Close(got)
			}
		}
	}
}

// hvcStdio makes the virtio console this process's standard input and
// output when the command line names hvc0 a console: the kernel opened
// /dev/console for init before virtio_console was loaded, when hvc0 had no
// device behind it yet.
func hvcStdio(cmdline []string) {
	hvc := false
	for _, f := range cmdline {
		if v, ok := strings.CutPrefix(f, "console="); ok {
			if name, _, _ := strings.Cut(v, ","); name == "hvc0" {
				hvc = true
			}
		}
	}
	if !hvc {
		return
	}
	// The port appears when the driver has probed the device.
	deadline := time.Now().Add(10 * time.Second)
	for {
		fd, err := unix.Open("/dev/hvc0", unix.O_RDWR|unix.O_NOCTTY, 0)
		if err == nil {
			for _, std := range []int{0, 1, 2} {
				unix.Dup2(fd, std)
			}
			if fd > 2 {
				unix.Close(fd)
			}
			return
		}
		if time.Now().After(deadline) {
			fmt.Printf("guest: console hvc0: %v\n", err)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reportHWRNG says which hardware RNG the kernel uses, whether it
// delivers and how its interrupts arrive: "guest: hwrng <name> read=<n>
// irq=<chip>", n being how many of 64 bytes /dev/hwrng returned within 5 s
// (-1: none). The VMM's virtio-rng binds as virtio_rng.0.
//
// With hyperroot.rngcpu=<n> on the command line, the virtio-rng's
// interrupts are first steered to CPU n, 512 bytes are read, and the line
// ends with
// " cpu<n>=<interrupts>": how many of them CPU n took, which shows an MSI
// reaching that CPU (on a VM of more than 255 vCPUs, through the extended
// destination id).
func reportHWRNG(cmdline []string) {
	name := "none"
	if b, err := os.ReadFile("/sys/class/misc/hw_random/rng_current"); err == nil {
		name = strings.TrimSpace(string(b))
	}
	cpu := -1
	for _, f := range cmdline {
		if v, ok := strings.CutPrefix(f, "hyperroot.rngcpu="); ok {
			cpu, _ = strconv.Atoi(v)
		}
	}
	var irqs []string
	size := 64
	if cpu >= 0 {
		irqs = steerRNG(cpu)
		// More than the driver keeps at hand, so that the device
		// must be asked, and answer with interrupts, several times.
		size = 512
	}
	got := make(chan int, 1)
	go func() {
		f, err := os.Open("/dev/hwrng")
		if err != nil {
			got <- -1
			return
		}
		defer f.Close()
		buf := make([]byte, size)
		n, _ := io.ReadFull(f, buf)
		got <- n
	}()
	n := -1
	select {
	case n = <-got:
	case <-time.After(5 * time.Second):
	}
	took := ""
	if cpu >= 0 {
		took = fmt.Sprintf(" cpu%d=%d", cpu, interruptsOn(cpu, irqs))
	}
	fmt.Printf("guest: hwrng %s read=%d irq=%s%s\n", name, n, virtioIRQ(), took)
}

// steerRNG sets the affinity of the virtio entropy device's interrupts
// to cpu and returns their numbers (FAIL lines for what went wrong).
func steerRNG(cpu int) []string {
	dev := ""
	devs, _ := filepath.Glob("/sys/bus/virtio/devices/virtio*")
	for _, d := range devs {
		if b, err := os.ReadFile(d + "/device"); err == nil && strings.TrimSpace(string(b)) == "0x0004" {
			dev = filepath.Base(d) // entropy source: virtio device id 4
		}
	}
	if dev == "" {
		fmt.Println("guest: FAIL rngcpu: no virtio entropy device")
		return nil
	}
	b, _ := os.ReadFile("/proc/interrupts")
	var irqs []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.Contains(line, dev+"-") {
			continue
		}
		irq := strings.TrimSuffix(f[0], ":")
		if err := os.WriteFile("/proc/irq/"+irq+"/smp_affinity_list", []byte(strconv.Itoa(cpu)), 0); err != nil {
			fmt.Printf("guest: FAIL rngcpu: irq %s to CPU %d: %v\n", irq, cpu, err)
			continue
		}
		irqs = append(irqs, irq)
	}
	return irqs
}

// interruptsOn sums what cpu's column of /proc/interrupts counts for irqs.
func interruptsOn(cpu int, irqs []string) int {
	b, _ := os.ReadFile("/proc/interrupts")
	lines := strings.Split(string(b), "\n")
	col := slices.Index(strings.Fields(lines[0]), fmt.Sprintf("CPU%d", cpu))
	if col < 0 {
		return -1
	}
	n := 0
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) > col+1 && slices.Contains(irqs, strings.TrimSuffix(f[0], ":")) {
			c, _ := strconv.Atoi(f[col+1])
			n += c
		}
	}
	return n
}

// virtioIRQ names the interrupt controller of the first virtio interrupt
// in /proc/interrupts ("PCI-MSI" with MSI-X on Linux 6.1, "PCI-MSIX-<bdf>"
// on later kernels, "IO-APIC" with INTx), or "none".
func virtioIRQ() string {
	b, _ := os.ReadFile("/proc/interrupts")
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, "virtio") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "PCI-MSI") || f == "IO-APIC" {
				return f
			}
		}
	}
	return "none"
}

func memTotalKB() uint64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	var kb uint64
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "MemTotal:") {
			fmt.Sscanf(strings.TrimPrefix(line, "MemTotal:"), "%d", &kb)
		}
	}
	return kb
}

// sysfsWord is the first word of a sysfs file, or "none" when it cannot
// be read. The booted line carries the RTC's own reading (the kernel reads
// the chip when since_epoch is opened) and the clocksource beside the
// system clock, so a wrong wall clock says which of them was wrong.
func sysfsWord(path string) string {
	b, err := os.ReadFile(path)
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "none"
}

// virtFlag is the hardware virtualisation the CPU offers the guest, as
// /proc/cpuinfo's flags say: "vmx", "svm" or "none".
func virtFlag() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if name, flags, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(name) == "flags" {
			for _, f := range strings.Fields(flags) {
				if f == "vmx" || f == "svm" {
					return f
				}
			}
			return "none"
		}
	}
	return "none"
}
