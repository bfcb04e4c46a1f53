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
	flag.StringVar(&o.Accel, "accel", "auto", "auto, kvm (-cpu host) or tcg (-cpu max)")
	flag.BoolVar(&o.UserNet, "usernet", false, "give the appliance a NIC (eth0) on QEMU user networking, e.g. as an uplink")
	flag.Func("drive", "a raw image file to attach as the appliance's next virtio disk (/dev/vda, /dev/vdb, ...; repeatable),\n"+
		"e.g. a data disk: an ext4 filesystem labelled hyperroot-data", func(s string) error {
		o.Drives = append(o.Drives, s)
		return nil
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
