// Command runner boots a built hyperroot image in QEMU with the console on
// the terminal (`./build.sh run` calls it). With -oneshot the appliance powers
// off when its work is done and runner exits 0 only if the appliance
// reported success ("hyperroot: result pass") and powered off cleanly in
// time; 1 otherwise; 2 for bad arguments.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

func main() {
	var o qemu.Options
	flag.StringVar(&o.Image, "image", "out/image", "directory of the built image")
	flag.StringVar(&o.Memory, "memory", "2G", "appliance RAM (QEMU syntax: 512M, 2G)")
	flag.IntVar(&o.CPUs, "cpus", 0, "appliance vCPUs (default 2; 1 under the TCG of QEMU 7, whose nested guests are unreliable on several CPUs)")
	flag.StringVar(&o.Append, "append", "", "extra kernel command-line arguments")
	flag.StringVar(&o.Config, "config", "", "configuration file to install as /etc/hyperroot/config.yaml")
	flag.StringVar(&o.Overlay, "overlay", "", "directory whose files are added to the image's root")
	flag.BoolVar(&o.Oneshot, "oneshot", false, "image-testing mode: power off when done, exit status is the verdict")
	flag.DurationVar(&o.Timeout, "timeout", 0, "kill QEMU after this long (default: none, 10m with -oneshot)")
	flag.DurationVar(&o.Silence, "silence", 0, "when the console prints nothing for this long (or a kernel reports a stall twice),\n"+
		"type \"dump\" (the VMMs print their vCPUs), then kill QEMU (default: never): a frozen appliance ends\n"+
		"the run with evidence instead of waiting out -timeout")
	flag.StringVar(&o.Accel, "accel", "auto", "auto, kvm (-cpu host) or tcg (-cpu max)")
	flag.BoolVar(&o.UserNet, "usernet", false, "give the appliance a NIC (eth0) on QEMU user networking, e.g. as an uplink")
	flag.Func("drive", "a raw image file to attach as the appliance's next virtio disk (/dev/vda, /dev/vdb, ...; repeatable),\n"+
		"e.g. a data disk: an ext4 filesystem labelled hyperroot-data", func(s string) error {
		o.Drives = append(o.Drives, s)
		return nil
	})
	flag.BoolVar(&o.IOMMU, "iommu", false, "give the appliance an emulated Intel IOMMU (for PCI passthrough) and intel_iommu=on")
	flag.Func("nvme", "an NVMe controller for the appliance (repeatable): serial=S[,vfs=N],ns=FILE[:FILE...]\n"+
		"(raw files, namespaces 1, 2, ...; with vfs, an SR-IOV physical function whose namespaces start detached)", func(s string) error {
		c, err := parseNVMe(s)
		o.NVMe = append(o.NVMe, c)
		return err
	})
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "runner: unexpected argument %q\n", flag.Arg(0))
		os.Exit(2)
	}
	if o.Oneshot && o.Timeout == 0 {
		o.Timeout = 10 * time.Minute
	}
	o.Console = os.Stdout
	o.Stdin = os.Stdin
	if _, err := unix.IoctlGetTermios(int(os.Stdin.Fd()), unix.TCGETS); err != nil {
		// Not a terminal (a script, ./build.sh bench): QEMU reads a
		// pipe the runner feeds, so that on a 1-vCPU TCG appliance
		// tools/qemu can type its Ctrl-Q nudge (a lost timer
		// interrupt otherwise stalls the appliance for good).
		o.Stdin = struct{ io.Reader }{os.Stdin}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	m, err := qemu.Start(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "runner: %v\n", err)
		os.Exit(2)
	}
	r := m.Wait()
	if !o.Oneshot {
		os.Exit(r.ExitCode)
	}
	if !r.OK() {
		fmt.Fprintf(os.Stderr, "runner: FAIL: %s\n", r.Why())
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "runner: PASS")
}

// parseNVMe reads an -nvme value.
func parseNVMe(s string) (qemu.NVMe, error) {
	var c qemu.NVMe
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "serial":
			c.Serial = v
		case "vfs":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return c, fmt.Errorf("vfs=%q: want a positive number", v)
			}
			c.VFs = n
		case "ns":
			c.Namespaces = strings.Split(v, ":")
		default:
			return c, fmt.Errorf("unknown key %q: want serial, vfs and ns", k)
		}
	}
	if c.Serial == "" || len(c.Namespaces) == 0 {
		return c, fmt.Errorf("want serial=S,ns=FILE[:FILE...]")
	}
	return c, nil
}
