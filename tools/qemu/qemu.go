// Package qemu boots a built hyperroot image in QEMU and reads it from its
// serial console: the engine behind `./build.sh run` and the end-to-end
// tests. It picks hardware KVM where the CPU has it and TCG otherwise,
// adds configuration and overlay files as an extra initramfs archive, and in
// oneshot mode turns the console's verdict into an exit status.
package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hyperroot/hyperroot/board"
	"github.com/hyperroot/hyperroot/image"
)

// Options describe one boot. The zero value of each field means its default.
type Options struct {
	Image   string        // directory with vmlinuz, initramfs.cpio, board.yaml (default out/image)
	Memory  string        // guest RAM in QEMU syntax (default 2G)
	CPUs    int           // vCPUs (default 2 with KVM, 1 with TCG: see chooseAccel)
	Append  string        // extra kernel command-line arguments
	Config  string        // a configuration file, installed as /etc/hyperroot/config.yaml
	Overlay string        // a directory copied over the image's root
	Files   []string      // more "host-path:image-path" pairs added with the overlay, read in place
	Oneshot bool          // hyperroot.oneshot=1: the appliance powers off when done
	Timeout time.Duration // kill QEMU after this long (0: none); with Oneshot the appliance gets hyperroot.timeout=ApplianceTimeout(Timeout)
	// Silence kills QEMU once its console has printed nothing for this
	// long (0: never). It is how a test tells a hung appliance from a slow
	// one without a deadline tuned to one machine's speed: slow machines
	// print the same lines, later; a hung one stops printing. Unless the
	// console is a terminal, "dump" is typed on it first (the appliance's
	// console command that makes every VMM print its vCPUs' state), and
	// QEMU is killed once that output has ended: a hang that took minutes
	// to happen leaves the evidence of where the guests were. A guest,
	// or the appliance's own kernel, that reports a stall twice (an RCU
	// stall, a soft lockup: see guestStallRE), which keeps the console
	// busy, is treated alike.
	Silence time.Duration
	Accel   string    // auto (default), kvm or tcg
	Console io.Writer // receives the console output (default: discarded)
	Stdin   io.Reader // console input (default: none); a terminal makes the session interactive
	Binary  string    // QEMU binary (default: DefaultBinary)
	// Drives are host image files (raw) attached to the appliance as
	// virtio-blk disks, /dev/vda, /dev/vdb, ... in this order: host files
	// the appliance's VMs can use as disks, which the host can inspect
	// after QEMU has exited.
	Drives []string
	// UserNet gives the appliance one NIC (its eth0) on QEMU's user-mode
	// network: the outside world for an uplink, where 10.0.2.2 is the
	// host's loopback and 10.0.2.3 a DNS server.
	UserNet bool
	// Forward maps host TCP ports to the appliance's over the user-mode
	// network (UserNet is implied): host port (on 127.0.0.1) to guest
	// port, for a client on the host of a server in the appliance.
	Forward map[int]int
	// PXE, when set, network-boots the appliance instead of loading
	// Image's kernel and initramfs: QEMU's iPXE ROM on the user-mode NIC
	// (UserNet is implied) gets this URL as its DHCP boot file. The
	// script it names gives the kernel command line, so Append, Config,
	// Overlay, Files and Oneshot's options do not apply.
	PXE string
	// PhysBits, when not 0, is the physical address width of the
	// emulated CPU (TCG; under KVM the host CPU's applies): TCG's
	// default, 40 bits, lets the appliance's KVM map guest RAM up to
	// 1 TiB only.
	PhysBits int
	// CPUFeatures are added to the emulated CPU's model as QEMU spells
	// them ("-pdpe1gb" takes 1 GiB pages away): a test of what the
	// appliance does on a CPU that lacks something.
	CPUFeatures []string
	// NUMANodes, when 2 or more, gives the appliance that many NUMA
	// nodes: Memory split evenly among them, vCPU c on node c%NUMANodes
	// (nodes past the vCPUs have memory only).
	NUMANodes int
	// NUMADistance, when not 0, is the distance QEMU's SLIT gives
	// between any two of those nodes (QEMU's default: 20).
	NUMADistance int
	// IOMMU gives the appliance an emulated Intel IOMMU with interrupt
	// remapping and caching mode (which VFIO needs, to see every mapping
	// the appliance makes), and intel_iommu=on: what device passthrough
	// needs of the machine.
	IOMMU bool
	// NVMe are NVMe controllers of the appliance, in the first PCI slots
	// after the host bridge (00:01.0, 00:02.0, ...), in this order.
	NVMe []NVMe
	// BridgeDrives puts the Drives behind a conventional PCI bridge, where
	// they share one IOMMU group (an IOMMU cannot tell apart what a PCI
	// bridge forwards): devices the appliance cannot pass through one by
	// one.
	BridgeDrives bool
}

// NVMe is an emulated NVMe controller with one namespace per file, each a
// raw host file the host can read after QEMU has exited.
type NVMe struct {
	Serial string // the controller's serial number (required: QEMU wants one)
	// Namespaces are the files of namespaces 1, 2, ...
	Namespaces []string
	// VFs, when not 0, makes it an SR-IOV physical function with this
	// many virtual functions (secondary controllers), each with two
	// queues and one interrupt vector to be assigned, and its namespaces
	// attached to no controller: the appliance attaches each where it
	// wants it (NVMe namespace management).
	VFs int
}

// Machine is a running QEMU.
type Machine struct {
	cmd     *exec.Cmd
	tmp     string
	qmpPath string
	done    chan struct{}
	waitErr error
	timeout bool
	silent  time.Duration // killed by Options.Silence after this much silence
	// stalled is the kernel's report that made the silence watchdog act
	// (guestStallRE, a second time from one VM); stall is closed then.
	stalled string
	stall   chan struct{}
	stalls  map[string]int // guest stall reports so far, by VM
	lastOut time.Time      // when the console last printed
	typist  *typist        // the console's input, when not a file; nil otherwise
	cpus    int            // the appliance's vCPUs
	console io.Writer      // Options.Console

	mu     sync.Mutex
	lines  []string
	cursor int
	more   chan struct{} // closed and replaced whenever a line arrives
}

// ApplianceTimeout is the hyperroot.timeout= a oneshot run with host-side
// timeout t gets: a fifth of t (at least 20 s, at most half of t) earlier,
// so that the appliance itself gives up first and has time to dump the
// state of every VMM still running, stop them and power off with a
// verdict before QEMU is killed.
func ApplianceTimeout(t time.Duration) time.Duration {
	margin := min(max(t/5, 20*time.Second), t/2)
	return (t - margin).Round(time.Second)
}

var memRE = regexp.MustCompile(`^[1-9][0-9]*[MGT]?$`)

// DefaultBinary is the QEMU that Start runs unless told otherwise:
// $HYPERROOT_QEMU when set, else qemu-system-x86_64 from $PATH.
func DefaultBinary() string {
	if b := os.Getenv("HYPERROOT_QEMU"); b != "" {
		return b
	}
	return "qemu-system-x86_64"
}

// Start boots the image.
func Start(ctx context.Context, o Options) (*Machine, error) {
	if o.Image == "" {
		o.Image = "out/image"
	}
	if o.Memory == "" {
		o.Memory = "2G"
	}
	if o.Binary == "" {
		o.Binary = DefaultBinary()
	}
	if o.Console == nil {
		o.Console = io.Discard
	}
	if !memRE.MatchString(o.Memory) {
		return nil, fmt.Errorf("memory %q: want a size such as 512M or 2G", o.Memory)
	}
	if o.CPUs < 0 {
		return nil, fmt.Errorf("cpus %d: want at least 1", o.CPUs)
	}
	qemuPath, err := exec.LookPath(o.Binary)
	if err != nil {
		return nil, fmt.Errorf("%s not found: apt-get install qemu-system-x86 (./build.sh deps does it)", o.Binary)
	}
	b, err := readImageBoard(o.Image)
	if err != nil {
		return nil, err
	}
	accel, err := chooseAccel(o.Accel)
	if err != nil {
		return nil, err
	}
	if o.CPUs == 0 {
		o.CPUs = defaultCPUs(accel[1], qemuPath)
	}
	if o.PhysBits != 0 && accel[1] == "tcg" { // under KVM the host CPU's width applies
		if o.PhysBits < 36 || o.PhysBits > 52 {
			return nil, fmt.Errorf("phys-bits %d: want 36 to 52", o.PhysBits)
		}
		accel[len(accel)-1] += fmt.Sprintf(",phys-bits=%d", o.PhysBits) // -cpu max,phys-bits=N
	}
	for _, f := range o.CPUFeatures {
		if f == "" || strings.ContainsAny(f, ", ") {
			return nil, fmt.Errorf("CPU feature %q: want one QEMU feature name such as -pdpe1gb", f)
		}
		accel[len(accel)-1] += "," + f // -cpu max,-pdpe1gb
	}
	tmp, err := os.MkdirTemp("", "hyperroot-qemu-")
	if err != nil {
		return nil, err
	}
	m := &Machine{tmp: tmp, qmpPath: filepath.Join(tmp, "qmp.sock"), console: o.Console, done: make(chan struct{}), more: make(chan struct{}), cpus: o.CPUs,
		stall: make(chan struct{}), stalls: map[string]int{}}
	initrd, err := m.initrd(o)
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	cmdline := strings.TrimSpace(b.Cmdline + " " + o.Append)
	if accel[1] == "tcg" && !strings.Contains(cmdline, "tsc=") {
		cmdline += " " + tcgClock
	}
	if o.IOMMU {
		cmdline += " intel_iommu=on"
	}
	if o.Oneshot {
		cmdline += " hyperroot.oneshot=1"
		if o.Timeout > 0 && !strings.Contains(cmdline, "hyperroot.timeout=") {
			cmdline += " hyperroot.timeout=" + ApplianceTimeout(o.Timeout).String()
		}
	}
	boot := []string{"-kernel", filepath.Join(o.Image, "vmlinuz"), "-initrd", initrd, "-append", cmdline}
	if o.PXE != "" {
		if strings.Contains(o.PXE, ",") {
			os.RemoveAll(tmp)
			return nil, fmt.Errorf("pxe %s: a comma cannot be passed to QEMU's bootfile=", o.PXE)
		}
		boot = []string{"-boot", "n"}
	}
	args := append(accel, "-machine", "q35", "-smp", fmt.Sprint(o.CPUs), "-m", o.Memory)
	args = append(args, boot...)
	args = append(args,
		"-display", "none", "-vga", "none", "-no-reboot",
		"-qmp", "unix:"+m.qmpPath+",server=on,wait=off",
		// QEMU's own record of CPU resets: a reset the appliance did
		// not ask for (a triple fault) ends QEMU (-no-reboot) without a
		// word on the console; the log says what it was (resetCause).
		"-d", "cpu_reset", "-D", filepath.Join(tmp, "qemu.log"),
	)
	if o.NUMANodes > 1 {
		numa, err := numaArgs(o.Memory, o.CPUs, o.NUMANodes, o.NUMADistance)
		if err != nil {
			os.RemoveAll(tmp)
			return nil, err
		}
		args = append(args, numa...)
	}
	if o.PXE != "" {
		args = append(args, "-netdev", "user,id=wan,bootfile="+o.PXE, "-device", "virtio-net-pci,netdev=wan")
	} else if o.UserNet || len(o.Forward) > 0 {
		netdev := "user,id=wan"
		for _, hp := range slices.Sorted(maps.Keys(o.Forward)) {
			netdev += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", hp, o.Forward[hp])
		}
		args = append(args, "-netdev", netdev, "-device", "virtio-net-pci,netdev=wan")
	} else {
		args = append(args, "-nic", "none")
	}
	if o.IOMMU {
		args = append(args, "-device", "intel-iommu,intremap=on,caching-mode=on")
	}
	nvme, err := nvmeArgs(o.NVMe)
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	args = append(args, nvme...)
	if o.BridgeDrives && len(o.Drives) > 0 {
		args = append(args, "-device", "pci-bridge,id=drives,chassis_nr=1")
	}
	for i, d := range o.Drives {
		if fi, err := os.Stat(d); err != nil || !fi.Mode().IsRegular() || strings.Contains(d, ",") {
			os.RemoveAll(tmp)
			return nil, fmt.Errorf("drive %s: not a regular file (or has a comma in its name)", d)
		}
		if o.BridgeDrives {
			id := fmt.Sprintf("drive%d", i)
			args = append(args, "-drive", "file="+d+",format=raw,if=none,id="+id,
				"-device", fmt.Sprintf("virtio-blk-pci,drive=%s,bus=drives,addr=%d", id, i+1))
			continue
		}
		args = append(args, "-drive", "file="+d+",format=raw,if=virtio")
	}
	if f, ok := o.Stdin.(*os.File); ok && isTerminal(f) {
		args = append(args, "-serial", "mon:stdio") // Ctrl-A X quits, Ctrl-A C the monitor
	} else {
		args = append(args, "-serial", "stdio", "-monitor", "none")
	}
	m.cmd = exec.CommandContext(ctx, qemuPath, args...)
	m.cmd.Stderr = o.Console
	// The appliance dies with whoever started it: a test binary that
	// go test's timeout panicked, or a killed runner, left appliances
	// running on for half an hour, slowing every test after them.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if f, ok := o.Stdin.(*os.File); ok {
		m.cmd.Stdin = f
	} else {
		stdin, err := m.cmd.StdinPipe()
		if err != nil {
			os.RemoveAll(tmp)
			return nil, err
		}
		m.typist = &typist{w: stdin}
	}
	out, err := m.cmd.StdoutPipe()
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	if err := m.cmd.Start(); err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("start %s: %w", o.Binary, err)
	}
	if m.typist != nil && o.Stdin != nil {
		// Not exec's own copying, which Wait would wait for: a reader
		// that never ends (a pipe the caller keeps open) must not keep
		// Wait from returning once QEMU has exited. The pipe stays open
		// when o.Stdin ends, for the silence watchdog's "dump". Once
		// QEMU is gone what the caller types is read and dropped: a
		// caller writing into an io.Pipe would otherwise block for
		// good on its next line instead of failing at its next expect.
		go func() {
			if _, err := io.Copy(m.typist, o.Stdin); err != nil {
				io.Copy(io.Discard, o.Stdin)
			}
		}()
	}
	m.lastOut = time.Now()
	if accel[1] == "tcg" && m.typist != nil {
		go m.nudge()
	}
	if o.Silence > 0 {
		go m.watchSilence(o.Silence)
	}
	var timer *time.Timer
	if o.Timeout > 0 {
		timer = time.AfterFunc(o.Timeout, func() {
			m.mu.Lock()
			m.timeout = true
			m.mu.Unlock()
			m.cmd.Process.Kill()
		})
	}
	go func() {
		m.read(out, o.Console)
		m.waitErr = m.cmd.Wait()
		if timer != nil {
			timer.Stop()
		}
		if cause := resetCause(filepath.Join(m.tmp, "qemu.log")); cause != "" {
			m.note(cause)
		}
		os.RemoveAll(m.tmp)
		close(m.done)
	}()
	return m, nil
}

// initrd returns the initramfs to boot: the image's own, or a copy with an
// extra archive holding the config, overlay and files appended.
func (m *Machine) initrd(o Options) (string, error) {
	base := filepath.Join(o.Image, "initramfs.cpio")
	var pairs []string
	if o.Overlay != "" {
		if fi, err := os.Stat(o.Overlay); err != nil || !fi.IsDir() {
			return "", fmt.Errorf("overlay %s: not a directory", o.Overlay)
		}
		pairs = append(pairs, o.Overlay+":/")
	}
	if o.Config != "" {
		if fi, err := os.Stat(o.Config); err != nil || !fi.Mode().IsRegular() {
			return "", fmt.Errorf("config %s: not a readable file", o.Config)
		}
		pairs = append(pairs, o.Config+":/etc/hyperroot/config.yaml")
	}
	pairs = append(pairs, o.Files...)
	if len(pairs) == 0 {
		return base, nil
	}
	data, err := os.ReadFile(base)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	buf.Write(data)
	for buf.Len()%4 != 0 { // each archive starts 4-byte aligned
		buf.WriteByte(0)
	}
	if err := image.WriteOverlay(&buf, pairs...); err != nil {
		return "", err
	}
	p := filepath.Join(m.tmp, "initramfs.cpio")
	return p, os.WriteFile(p, buf.Bytes(), 0o644)
}

func readImageBoard(dir string) (*board.Board, error) {
	for _, f := range []string{"vmlinuz", "initramfs.cpio"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return nil, fmt.Errorf("no built image in %s (missing %s): run ./build.sh build", dir, f)
		}
	}
	p := filepath.Join(dir, "board.yaml")
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("no built image in %s: %w: run ./build.sh build", dir, err)
	}
	return board.Parse(p, data)
}

// tcgClock keeps the TSC as the appliance's clock under TCG. QEMU's TCG
// CPU does not report an invariant TSC, and Linux then takes the TSCs of
// a multi-CPU AMD machine for unsynchronized and falls back to the HPET:
// every time read of every process in the appliance becomes a system call
// and an emulated MMIO read (the network benchmark counted ~280 per MiB in
// the switch alone), KVM's guest timers included. TCG's TSC is the host's,
// read under one lock for all vCPUs, so it is synchronized: as a server's
// invariant TSC, which is what the appliance runs on outside the test bed.
const tcgClock = "tsc=reliable"

// chooseAccel returns QEMU's accelerator and CPU arguments. Hardware KVM
// with -cpu host where /proc/cpuinfo shows vmx or svm; otherwise TCG with
// -cpu max, which emulates SVM with nested paging so that the appliance's
// own KVM works (the host's /dev/kvm may be a software one that cannot run
// a standard guest, see docs/TESTING.md).
func chooseAccel(accel string) ([]string, error) {
	if accel == "" || accel == "auto" {
		accel = "tcg"
		if info, err := os.ReadFile("/proc/cpuinfo"); err == nil && hasVirtFlag(string(info)) {
			accel = "kvm"
		}
	}
	switch accel {
	case "kvm":
		return []string{"-accel", "kvm", "-cpu", "host"}, nil
	case "tcg":
		return []string{"-accel", "tcg", "-cpu", "max"}, nil
	}
	return nil, fmt.Errorf("accel %q: want auto, kvm or tcg", accel)
}

// HostAccel is the accelerator "auto" picks on this host: "kvm" or "tcg".
func HostAccel() string {
	a, _ := chooseAccel("auto")
	return a[1]
}

// defaultCPUs is how many vCPUs the appliance gets unless told: 2, but 1
// under the TCG of QEMU before 8. QEMU 7.2's multi-threaded TCG runs
// nested SVM guests unreliably: with 2 vCPUs a 64-vCPU guest inside the
// appliance triple-faulted or crashed the appliance kernel in most boots,
// and with 1 it booted every time. QEMU 10's did not (docs/TESTING.md).
func defaultCPUs(accel, qemuPath string) int {
	if accel == "tcg" {
		out, _ := exec.Command(qemuPath, "--version").Output()
		if major, ok := qemuMajor(string(out)); !ok || major < 8 {
			return 1
		}
	}
	return 2
}

var versionRE = regexp.MustCompile(`QEMU emulator version (\d+)\.`)

// qemuMajor reads the major version from `qemu-system-x86_64 --version`.
func qemuMajor(version string) (int, bool) {
	m := versionRE.FindStringSubmatch(version)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	return n, err == nil
}

func hasVirtFlag(cpuinfo string) bool {
	for _, line := range strings.Split(cpuinfo, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "flags" {
			for _, f := range strings.Fields(v) {
				if f == "vmx" || f == "svm" {
					return true
				}
			}
		}
	}
	return false
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// nudgeEvery is how often nudge types on a TCG appliance's console.
const nudgeEvery = 2 * time.Second

// xon is the byte nudge types: START (Ctrl-Q), which the appliance's tty
// consumes for flow control (IXON, on by default), and which PID 1's
// console reader ignores should it get it.
const xon = 0x11

// nudge works around a fault of QEMU's TCG (7.2 and 10.0 alike): now and
// then it leaves the appliance's timer interrupt pending in the local APIC
// without the CPU noticing it, and keeps running the nested guest; a guest
// spinning for its second vCPU, whose thread needs that same CPU, then
// spins for minutes (docs/TESTING.md, Investigations). Seen mostly with one
// appliance vCPU, once with two (the whole appliance silent for 5 minutes).
// Any other interrupt makes QEMU look at the APIC again: a byte typed on the
// serial console raises the UART's. With two appliance vCPUs it reaches
// only the one the appliance routes the UART to; it costs nothing, so
// every TCG appliance gets it. Pausing and resuming the machine over QMP does not (a
// 64-vCPU guest stalled for 15 minutes with that done every 2 s).
func (m *Machine) nudge() {
	tick := time.NewTicker(nudgeEvery)
	defer tick.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-tick.C:
		}
		m.typist.Write([]byte{xon})
	}
}

// typist serialises writes to QEMU's console input, so that the silence
// watchdog's "dump" never lands inside a line a caller is typing.
type typist struct {
	mu sync.Mutex
	w  io.WriteCloser
}

func (t *typist) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.w.Write(p)
}

// dumpMax bounds how long the silence watchdog waits for the appliance's
// dump. It stops waiting earlier, once the console has been quiet again
// for the silence limit or 20 s, whichever is less: a dump under nested
// emulation takes seconds per VM.
const dumpMax = 2 * time.Minute

// watchSilence kills QEMU when its console stays silent for limit, after
// asking the appliance for a dump of its VMs when it can type.
func (m *Machine) watchSilence(limit time.Duration) {
	tick := time.NewTicker(min(limit/10, time.Second))
	defer tick.Stop()
	quiet, running := m.waitQuiet(tick.C, time.Time{}, limit, 0)
	if !running {
		return
	}
	m.mu.Lock()
	if m.stalled == "" {
		m.silent = quiet
	}
	m.mu.Unlock()
	m.recordEmulator()
	if m.typist != nil {
		asked := time.Now()
		// A newline first ends whatever a caller left half typed.
		io.WriteString(m.typist, "\ndump\n")
		if _, running := m.waitQuiet(tick.C, asked, min(limit, 20*time.Second), dumpMax); !running {
			return
		}
	}
	m.cmd.Process.Kill()
}

// waitQuiet waits, checking at each tick, until the console has printed
// nothing for d since its last output or since, whichever is later, or
// until most (if not 0) has passed since since; without since, also until
// a guest keeps stalling (noteStall). It returns how long the
// console had been quiet, and false if QEMU exited first.
func (m *Machine) waitQuiet(tick <-chan time.Time, since time.Time, d, most time.Duration) (time.Duration, bool) {
	stall := m.stall
	if !since.IsZero() {
		stall = nil // waiting for a dump to end, not for a stall
	}
	for {
		select {
		case <-m.done:
			return 0, false
		case <-stall:
			return 0, true
		case <-tick:
		}
		m.mu.Lock()
		quiet := time.Since(m.lastOut)
		m.mu.Unlock()
		if !since.IsZero() {
			quiet = min(quiet, time.Since(since))
		}
		if quiet >= d || (most > 0 && time.Since(since) >= most) {
			return quiet, true
		}
	}
}

// recordEmulator writes QEMU's own view of the appliance's CPUs to the
// console (each line prefixed "qemu: "): the registers, which say whether
// a CPU was running a nested guest, and every CPU's local APIC, whose
// pending and in-service interrupts and timer say whether the appliance
// kernel was being interrupted at all; the local APICs again after
// emulatorRecheck, so that an interrupt left pending (which a CPU with
// interrupts on takes at once) shows as such. When an appliance goes
// silent this tells a hang in the appliance (or its guests) from one in
// the emulator.
func (m *Machine) recordEmulator() {
	cpus := max(m.cpus, 1)
	look := func(when string) (string, []string) {
		regs := m.recordHMP("info registers -a", when)
		var lapics []string
		for i := range cpus {
			lapics = append(lapics, m.recordHMP(fmt.Sprintf("info lapic %d", i), when))
		}
		return regs, lapics
	}
	regs0, lapics0 := look("")
	time.Sleep(emulatorRecheck)
	regs1, lapics1 := look(fmt.Sprintf(" (%s later)", emulatorRecheck))
	m.mu.Lock()
	overdue, vms := overdueTimers(m.lines), vmsRunning(m.lines)
	m.mu.Unlock()
	if why := lostInterrupt(regs0, lapics0, regs1, lapics1, overdue, vms); why != "" {
		m.note(LostInterruptPrefix + why)
	}
}

// emulatorRecheck is how long recordEmulator waits before it looks at the
// CPUs again.
const emulatorRecheck = 3 * time.Second

// recordHMP writes the output of an HMP command to the console, prefixed,
// and returns it.
func (m *Machine) recordHMP(cmd, note string) string {
	out, err := m.HMP(cmd)
	if err != nil {
		out = err.Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "qemu: %s%s\n", cmd, note)
	for _, l := range strings.Split(strings.TrimRight(out, "\r\n"), "\n") {
		fmt.Fprintf(&b, "qemu:   %s\n", strings.TrimRight(l, "\r"))
	}
	if m.console != nil {
		m.console.Write([]byte(b.String()))
	}
	return out
}

// activity notes every byte the console prints, partial lines included
// (a guest's CPU bring-up prints one line piece by piece).
type activity struct {
	r io.Reader
	m *Machine
}

func (a activity) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		a.m.mu.Lock()
		a.m.lastOut = time.Now()
		a.m.mu.Unlock()
	}
	return n, err
}

func (m *Machine) read(r io.Reader, console io.Writer) {
	br := bufio.NewReader(activity{r, m})
	for {
		line, err := br.ReadString('\n')
		if len(line) > 0 {
			console.Write([]byte(line))
			m.mu.Lock()
			m.lines = append(m.lines, strings.TrimRight(line, "\r\n"))
			m.noteStall(strings.TrimRight(line, "\r\n"))
			close(m.more)
			m.more = make(chan struct{})
			m.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// guestStallRE matches a kernel's report that a CPU of it has made
// no progress: an RCU stall (reported after 21 s, again every 63 s while
// it lasts), a soft lockup, a task blocked for minutes. The console stays
// busy with such reports, so the silence watchdog would never act.
// The appliance's own kernel reports alike, without a VM's prefix (its
// lines start with the kernel's timestamp).
var guestStallRE = regexp.MustCompile(`^(?:(\S+)\| .*|\[ *[0-9.]+\] )(rcu: INFO: rcu_\w+ detected stalls|watchdog: BUG: soft lockup|INFO: task \S+ blocked for more than)`)

// GuestTripleFaultRE matches a VMM's report that its guest triple-faulted.
// In an appliance of more than one vCPU that is QEMU's multi-threaded TCG
// (tools/e2e's test bed retries such an attempt), so the machine stops at
// once, as for a stall, instead of leaving the test to wait out its
// silence timeout for lines that VM will never print.
var GuestTripleFaultRE = regexp.MustCompile(`\| hyperroot vmm: \S+: crash after .*\(vCPU \d+: triple fault\)`)

// guestRefaultRE matches a VMM's report that KVM keeps injecting page
// faults into a vCPU of it (init/vmm.go's refaultWatch): the vCPU makes no
// progress, and the machine is recorded and stopped at once, as for a
// stall, so that the dump shows the loop.
var guestRefaultRE = regexp.MustCompile(`\| hyperroot vmm: \S+: vcpu \d+: KVM injected \d+ page faults in \S+, each after emulating an instruction`)

// noteStall counts the kernels' stall reports; the second from one VM or
// from the appliance (a stall that outlived a report, which a slow
// emulator alone may cause),
// a guest's triple fault in a multi-vCPU appliance, or a VMM's report of
// a vCPU KVM keeps faulting, makes the silence
// watchdog record the state and stop. m.mu is held.
func (m *Machine) noteStall(line string) {
	if m.stalled != "" {
		return
	}
	if (m.cpus > 1 && GuestTripleFaultRE.MatchString(line)) || guestRefaultRE.MatchString(line) {
		m.stalled = line
		close(m.stall)
		return
	}
	s := guestStallRE.FindStringSubmatch(line)
	if s == nil {
		return
	}
	m.stalls[s[1]]++ // "" is the appliance
	if m.stalls[s[1]] == 2 {
		m.stalled = line
		close(m.stall)
	}
}

// Stalled returns the guest stall report that made the silence watchdog
// stop the machine, or "".
func (m *Machine) Stalled() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stalled
}

// TripleFaultLine is the console line the machine adds when QEMU's log
// shows that a CPU of the appliance triple-faulted: the appliance reset
// (and, with -no-reboot, QEMU exited) without its kernel saying anything.
const TripleFaultLine = "qemu: triple fault: a CPU of the appliance reset itself (QEMU's log)"

// resetCause reads QEMU's CPU reset log for a reset nobody asked for.
func resetCause(log string) string {
	data, err := os.ReadFile(log)
	if err == nil && bytes.Contains(data, []byte("Triple fault")) {
		return TripleFaultLine
	}
	return ""
}

// note adds a line of the test bed's own to the console.
func (m *Machine) note(line string) {
	if m.console != nil {
		m.console.Write([]byte(line + "\n"))
	}
	m.mu.Lock()
	m.lines = append(m.lines, line)
	close(m.more)
	m.more = make(chan struct{})
	m.mu.Unlock()
}

// Expect waits until a console line after the last one Expect matched
// matches re, and returns it.
func (m *Machine) Expect(re *regexp.Regexp, timeout time.Duration) (string, error) {
	deadline := time.After(timeout)
	for {
		m.mu.Lock()
		for ; m.cursor < len(m.lines); m.cursor++ {
			if re.MatchString(m.lines[m.cursor]) {
				l := m.lines[m.cursor]
				m.cursor++
				m.mu.Unlock()
				return l, nil
			}
		}
		more := m.more
		m.mu.Unlock()
		select {
		case <-more:
		case <-m.done:
			m.mu.Lock()
			n := len(m.lines)
			m.mu.Unlock()
			if m.cursor >= n {
				m.mu.Lock()
				silent := m.silent
				m.mu.Unlock()
				if silent > 0 {
					return "", fmt.Errorf("console silent for %s (QEMU killed) before a line matched %q", silent.Round(time.Second), re)
				}
				if stalled := m.Stalled(); stalled != "" {
					return "", fmt.Errorf("a kernel kept stalling or a guest triple-faulted (%q; QEMU killed) before a line matched %q", stalled, re)
				}
				return "", fmt.Errorf("QEMU exited before a line matched %q", re)
			}
		case <-deadline:
			return "", fmt.Errorf("no console line matched %q within %s", re, timeout)
		}
	}
}

// Lines returns a copy of every console line so far.
func (m *Machine) Lines() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.lines...)
}

// QMP sends one command (e.g. "system_powerdown") to QEMU's QMP socket.
// args is the JSON object of arguments, or "".
func (m *Machine) QMP(command, args string) error {
	_, err := m.qmp(command, args)
	return err
}

// HMP runs a human monitor command (e.g. "info registers") through QMP
// and returns its output.
func (m *Machine) HMP(command string) (string, error) {
	arg, err := json.Marshal(map[string]string{"command-line": command})
	if err != nil {
		return "", err
	}
	ret, err := m.qmp("human-monitor-command", string(arg))
	if err != nil {
		return "", err
	}
	var out string
	if err := json.Unmarshal(ret, &out); err != nil {
		return "", fmt.Errorf("qmp human-monitor-command %q: %w", command, err)
	}
	return out, nil
}

// qmp sends one command and returns its "return" value.
func (m *Machine) qmp(command, args string) (json.RawMessage, error) {
	conn, err := net.DialTimeout("unix", m.qmpPath, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	dec := json.NewDecoder(conn)
	var greeting map[string]json.RawMessage
	if err := dec.Decode(&greeting); err != nil {
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	msg := `{"execute":"qmp_capabilities"}` + "\n" + `{"execute":"` + command + `"`
	if args != "" {
		msg += `,"arguments":` + args
	}
	if _, err := io.WriteString(conn, msg+"}\n"); err != nil {
		return nil, err
	}
	// Two answers: qmp_capabilities', then the command's. Events may
	// come in between.
	for answers := 0; ; {
		var a struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Desc string `json:"desc"`
			} `json:"error"`
		}
		if err := dec.Decode(&a); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", command, err)
		}
		switch {
		case a.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s", command, a.Error.Desc)
		case a.Return != nil:
			if answers++; answers == 2 {
				return a.Return, nil
			}
		}
	}
}

// Result is how a boot ended.
type Result struct {
	ExitCode int           // QEMU's exit status
	TimedOut bool          // killed by Options.Timeout
	Silent   time.Duration // killed by Options.Silence after this much silence (0: not)
	Stalled  string        // killed by the silence watchdog for this guest stall report ("": not)
	Verdict  string        // "pass", "fail ..." from the console's "hyperroot: result" line, or ""
	PowerOff bool          // the appliance said "hyperroot: poweroff"
	Panic    bool          // the kernel panicked
	Lines    []string      // the whole console
}

// OK is the oneshot verdict: the appliance reported success and powered off
// cleanly, and QEMU exited 0 in time.
func (r Result) OK() bool {
	return r.Verdict == "pass" && r.PowerOff && !r.Panic && !r.TimedOut && r.Silent == 0 && r.Stalled == "" && r.ExitCode == 0
}

// Why explains a failed Result in one line.
func (r Result) Why() string {
	switch {
	case r.TimedOut:
		return "timed out"
	case r.Silent > 0:
		return fmt.Sprintf("console silent for %s: killed", r.Silent.Round(time.Second))
	case r.Stalled != "":
		return fmt.Sprintf("a kernel kept stalling (%q): killed", r.Stalled)
	case r.Panic:
		return "kernel panic"
	case r.Verdict == "":
		return fmt.Sprintf("no 'hyperroot: result' line (QEMU exit %d)", r.ExitCode)
	case r.Verdict != "pass":
		return "appliance reported: result " + r.Verdict
	case !r.PowerOff:
		return "no clean poweroff"
	case r.ExitCode != 0:
		return fmt.Sprintf("QEMU exit status %d", r.ExitCode)
	}
	return "ok"
}

var resultRE = regexp.MustCompile(`hyperroot: result (.*)$`)

// Wait waits for QEMU to exit and judges the console.
func (m *Machine) Wait() Result {
	<-m.done
	var r Result
	var ee *exec.ExitError
	if errors.As(m.waitErr, &ee) {
		r.ExitCode = ee.ExitCode()
	} else if m.waitErr != nil {
		r.ExitCode = -1
	}
	m.mu.Lock()
	r.TimedOut = m.timeout
	r.Silent, r.Stalled = m.silent, m.stalled
	m.mu.Unlock()
	r.Lines = m.Lines()
	for _, l := range r.Lines {
		if s := resultRE.FindStringSubmatch(l); s != nil {
			r.Verdict = strings.TrimSpace(s[1])
		}
		if strings.HasSuffix(l, "hyperroot: poweroff") {
			r.PowerOff = true
		}
		if strings.Contains(l, "Kernel panic") {
			r.Panic = true
		}
	}
	return r
}

// Done reports whether QEMU has exited, and if so how the boot ended.
func (m *Machine) Done() (Result, bool) {
	select {
	case <-m.done:
		return m.Wait(), true
	default:
		return Result{}, false
	}
}

// Kill stops QEMU at once.
func (m *Machine) Kill() {
	m.cmd.Process.Kill()
	<-m.done
}

// numaArgs are QEMU's options for an appliance of memory (as Options has
// it) and cpus vCPUs in nodes NUMA nodes, distance apart (0: QEMU's
// default).
func numaArgs(memory string, cpus, nodes, distance int) ([]string, error) {
	digits, shift := memory, 0 // QEMU's -m counts MiB without a suffix
	switch memory[len(memory)-1] {
	case 'M':
		digits = memory[:len(memory)-1]
	case 'G':
		digits, shift = memory[:len(memory)-1], 10
	case 'T':
		digits, shift = memory[:len(memory)-1], 20
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("memory %q: %w", memory, err)
	}
	mib := n << shift
	if mib%uint64(nodes) != 0 || nodes > 8 {
		return nil, fmt.Errorf("numa: %d MiB does not split evenly among %d nodes (at most 8)", mib, nodes)
	}
	var args []string
	for i := 0; i < nodes; i++ {
		node := fmt.Sprintf("node,nodeid=%d,memdev=numa%d", i, i)
		for c := i; c < cpus; c += nodes {
			node += fmt.Sprintf(",cpus=%d", c)
		}
		args = append(args, "-object", fmt.Sprintf("memory-backend-ram,id=numa%d,size=%dM", i, mib/uint64(nodes)), "-numa", node)
	}
	if distance != 0 {
		for i := 0; i < nodes; i++ {
			for j := 0; j < nodes; j++ {
				if i != j {
					args = append(args, "-numa", fmt.Sprintf("dist,src=%d,dst=%d,val=%d", i, j, distance))
				}
			}
		}
	}
	return args, nil
}

// nvmeArgs are QEMU's arguments for the controllers cs. A controller with
// VFs is in an NVMe subsystem of its own, as QEMU's SR-IOV requires, and
// its namespaces are private (attachable to one controller at a time) and
// start detached.
func nvmeArgs(cs []NVMe) ([]string, error) {
	var args []string
	for i, c := range cs {
		if c.Serial == "" || strings.ContainsAny(c.Serial, ",=") {
			return nil, fmt.Errorf("nvme %d: serial %q: want one, without commas or '='", i, c.Serial)
		}
		ctrl := fmt.Sprintf("nvme,id=nvme%d,serial=%s", i, c.Serial)
		nsOpts := ""
		if c.VFs > 0 {
			// QEMU (10.0) does not map a VF's BAR the appliance's
			// kernel places above 4 GiB (its "info pci" shows the VFs'
			// BAR0 "32 bit memory (not mapped)" with the PF's VF BAR
			// at 0x100000000, and the VFs read as zeros): without a
			// 64-bit PCI window the kernel puts it below.
			if i == slices.IndexFunc(cs, func(c NVMe) bool { return c.VFs > 0 }) {
				args = append(args, "-global", "q35-pcihost.pci-hole64-size=0")
			}
			// Each VF gets 2 queues (admin and one I/O) and 1
			// vector from the flexible pools; the PF keeps the rest.
			args = append(args, "-device", fmt.Sprintf("nvme-subsys,id=nvmesubsys%d,nqn=hyperroot-test-%d", i, i))
			ctrl += fmt.Sprintf(",subsys=nvmesubsys%d,sriov_max_vfs=%d,sriov_vq_flexible=%d,sriov_vi_flexible=%d,sriov_max_vq_per_vf=2,sriov_max_vi_per_vf=1",
				i, c.VFs, 2*c.VFs, c.VFs)
			nsOpts = ",shared=false,detached=true"
		}
		args = append(args, "-device", ctrl)
		for j, f := range c.Namespaces {
			if fi, err := os.Stat(f); err != nil || !fi.Mode().IsRegular() || strings.Contains(f, ",") {
				return nil, fmt.Errorf("nvme %d: namespace %d: %s: not a regular file (or has a comma in its name)", i, j+1, f)
			}
			id := fmt.Sprintf("nvme%dns%d", i, j+1)
			args = append(args, "-drive", "file="+f+",format=raw,if=none,id="+id,
				"-device", fmt.Sprintf("nvme-ns,drive=%s,bus=nvme%d,nsid=%d%s", id, i, j+1, nsOpts))
		}
	}
	return args, nil
}
