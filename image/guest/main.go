// Command guest is the init of the small test guest that the appliance
// image carries (/guest/initramfs.cpio): it reports what the guest sees
// (vCPUs, memory, clock) on its serial console and then does what
// hyperroot.guest=<action> on its kernel command line asks, so that the
// end-to-end tests can drive every way a VM ends.
//
// Actions: poweroff (default), reboot, panic, echo (answer each console line
// with "guest: echo <line>" until a line "poweroff"), wait (run until killed).
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/powerkey"
)

func main() {
	for _, m := range []struct{ src, dst, typ string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.typ, 0, ""); err != nil && err != unix.EBUSY {
			fmt.Printf("guest: mount %s: %v\n", m.dst, err)
		}
	}
	loadModules()
	n, _ := powerkey.Watch(func() {
		fmt.Println("guest: power button pressed, powering off")
		unix.Sync()
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	})
	var up unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &up)
	fmt.Printf("guest: booted nproc=%d memtotal_kb=%d time=%d uptime=%d.%03d inputs=%d\n",
		runtime.NumCPU(), memTotalKB(), time.Now().Unix(), up.Sec, up.Nsec/1e6, n)
	action := "poweroff"
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		for _, f := range strings.Fields(string(b)) {
			if v, ok := strings.CutPrefix(f, "hyperroot.guest="); ok {
				action = v
			}
		}
	}
	fmt.Printf("guest: action %s\n", action)
	switch action {
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
		os.WriteFile("/proc/sys/kernel/sysrq", []byte("1"), 0)
		os.WriteFile("/proc/sysrq-trigger", []byte("c"), 0)
	}
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
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
