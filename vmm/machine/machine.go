// Package machine assembles a KVM virtual machine from hyperroot's parts —
// guest memory, the Linux loader, ACPI tables, CPUID, the platform devices —
// and runs its vCPUs until the guest powers off, resets or crashes. It is the
// only package that knows about all of them; each of them knows nothing of
// the others.
package machine

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/vmm/acpi"
	"github.com/hyperroot/hyperroot/vmm/block"
	"github.com/hyperroot/hyperroot/vmm/boot"
	"github.com/hyperroot/hyperroot/vmm/bus"
	"github.com/hyperroot/hyperroot/vmm/cpuid"
	"github.com/hyperroot/hyperroot/vmm/devices/i8042"
	"github.com/hyperroot/hyperroot/vmm/devices/power"
	"github.com/hyperroot/hyperroot/vmm/devices/rtc"
	"github.com/hyperroot/hyperroot/vmm/devices/serial"
	"github.com/hyperroot/hyperroot/vmm/irq"
	"github.com/hyperroot/hyperroot/vmm/kvm"
	"github.com/hyperroot/hyperroot/vmm/layout"
	"github.com/hyperroot/hyperroot/vmm/memory"
	"github.com/hyperroot/hyperroot/vmm/pci"
	"github.com/hyperroot/hyperroot/vmm/vfio"
	"github.com/hyperroot/hyperroot/vmm/virtio/blk"
	vconsole "github.com/hyperroot/hyperroot/vmm/virtio/console"
	virtionet "github.com/hyperroot/hyperroot/vmm/virtio/net"
	virtiopci "github.com/hyperroot/hyperroot/vmm/virtio/pci"
)

// Config is what a VM is made of.
type Config struct {
	Kernel  []byte // bzImage or ELF vmlinux (boot.ParseKernel)
	Initrd  []byte // optional
	Cmdline string
	CPUs    int
	Memory  uint64 // bytes
	// HugePages backs guest RAM with huge pages (memory.Huge2M or Huge1G).
	HugePages memory.PageSize
	// Console receives the guest's serial output (COM1).
	Console io.Writer
	// Disks are served as virtio-blk devices, in this order on the PCI
	// bus (the guest's vda, vdb, ...).
	Disks []Disk
	// NICs are served as vhost-user virtio-net devices, after the disks
	// on the PCI bus (the guest's eth0, eth1, ...).
	NICs []NIC
	// Devices are host PCI devices passed through (VFIO), after the NICs.
	Devices []Device
	// MemNodes splits guest RAM into NUMA nodes and binds each to its
	// host node (memory.Options.Nodes); one node binds all of it.
	MemNodes []memory.Node
	// NodeCPUs, when not empty, gives the guest a virtual NUMA topology:
	// node i (with MemNodes[i]'s RAM) holds vCPUs NodeCPUs[i].
	NodeCPUs [][]int
	// NodeDistances, when not nil, are the guest nodes' SLIT rows
	// (node i's distance to each node); nil: 10 local, 20 remote.
	NodeDistances [][]uint8
	// Trace writes every port access but the serial port's, every access
	// no device claims, and every vCPU's registers each 3 s to stderr: for
	// finding out why a guest hangs. Slow.
	Trace bool
}

// NIC is one virtio-net interface whose frames a vhost-user backend (the
// switch) moves.
type NIC struct {
	// Dial connects to the backend's vhost-user socket; it is called
	// again to reconnect after the backend restarts.
	Dial func() (*net.UnixConn, error)
	MAC  net.HardwareAddr
	MTU  int // announced to the guest (VIRTIO_NET_F_MTU) unless 0
}

// Disk is one virtio-blk disk.
type Disk struct {
	// File is the image file or block device, opened by the caller (the
	// jailed VMM gets descriptors, never paths); it stays the caller's to
	// close after Machine.Close.
	File     *os.File
	ReadOnly bool
	ID       string // serial the guest reads (GET_ID), at most 20 bytes
	// IOPS and Bandwidth (bytes/s) bound the disk with token buckets
	// holding one second's worth; zero means unlimited.
	IOPS      uint64
	Bandwidth uint64
	// Direct bypasses the host's page cache (O_DIRECT, set on File
	// here): the guest's own cache is the only one, writes reach the
	// device without a second copy in host RAM, and a crash of the host
	// loses nothing the guest flushed.
	Direct bool
	// IO picks the block backend: IOAuto (io_uring where allowed, the
	// thread pool otherwise), IOUring (fail without io_uring) or IOPool.
	IO IOBackend
	// Qcow2 serves File as a qcow2 image; Backing is its backing chain,
	// its own backing file first, each opened read-only by the caller.
	Qcow2   bool
	Backing []BackingFile
	// Poll is the longest interval at which the VMM polls a queue the
	// guest keeps sending requests to, its notifications and interrupt
	// held meanwhile (vmm/virtio/blk, Options.Holdoff): negative never
	// holds (an interrupt per kick); 0 means DefaultDiskPoll on a host
	// that is itself a virtual machine (cpuid.HostIsVirtual), where its
	// guests' exits are dear, and never on bare metal, where the device's
	// wake-ups cost about what they save (BenchmarkHeldQueue).
	Poll time.Duration
}

// DefaultDiskPoll is a disk's poll interval when Disk.Poll is 0 on a
// virtual host: the
// interval between polls follows the guest's pace between requests, up to
// this. Measured in the TCG test bed, where a guest takes 300-1000 µs per
// request: a fixed 100 µs did better than 30 and 300; with the pace and
// the depth, 4 KiB requests at queue depth 4 and 32 ran at 1.26-3.56 of
// QEMU's rate against 1.04-1.77 unheld (docs/PERFORMANCE.md, History).
const DefaultDiskPoll = 100 * time.Microsecond

// BackingFile is one file of a qcow2 disk's backing chain.
type BackingFile struct {
	File  *os.File
	Qcow2 bool // else raw
}

// IOBackend names a block backend choice.
type IOBackend string

// Block backends a disk may ask for.
const (
	IOAuto  IOBackend = ""
	IOUring IOBackend = "io_uring"
	IOPool  IOBackend = "pool"
)

// Exit is how a guest ended.
type Exit int

const (
	ExitPoweroff Exit = iota // ACPI S5 (sleep control register)
	ExitReboot               // ACPI reset register or i8042 reset
	ExitCrash                // pvpanic, triple fault or a vCPU KVM could not run
	ExitStopped              // Stop was called
)

func (e Exit) String() string {
	return [...]string{"poweroff", "reboot", "crash", "stopped"}[e]
}

// Result is how Run ended, with a detail for people.
type Result struct {
	Exit   Exit
	Detail string
}

// Machine is a VM ready to run.
type Machine struct {
	sys   *kvm.System
	vm    *kvm.VM
	mem   *memory.Guest
	vcpus []*kvm.VCPU
	pio   bus.Bus
	mmio  bus.Bus
	pci   *pci.Bus

	serial  *serial.Device
	vcon    *vconsole.Device // a virtio console, for a guest whose console is hvc0 (nil: none)
	console *serial.Buffer   // the serial port's output; flushed when Run returns, closed by Close
	ged     *power.GED

	// virtio devices on the PCI bus, their MSI-X routers and the VM's
	// GSI routing table (virtio.go).
	virtio  []*virtiopci.Transport
	vnames  []string // each transport's device, as its errors name it ("disk 0: virtio-blk")
	routers []*msiRouter
	vfio    []*vfio.Device
	vfioPCI []*vfio.PCI
	vfioFDs []int       // their INTx eventfds
	slots   slotNumbers // KVM memory slots after RAM's
	errlog  *errorLog   // the devices' errors during guest accesses, rate-limited
	gsi     *gsiRoutes
	// disks' backends, closed after the transports have reset the
	// devices (which waits for requests in flight).
	backends []block.Backend
	disks    []*blk.Device // in Config.Disks order, for DiskStats
	nics     []*virtionet.Device

	trace bool
	// steps is how long each step of build took, in order (BuildSteps).
	steps []buildStep
	// x2apic: the VM has more vCPUs than xAPIC ids reach (x2APICCPUs).
	x2apic bool
	// vcpuThread run in order on each vCPU's thread before its first
	// KVM_RUN (OnVCPUThread).
	vcpuThread []func(i int) error
	stopOnce   sync.Once
	result     Result
	mu         sync.Mutex
	tids       []int         // OS thread of each running vCPU, 0 until it started
	started    int           // vCPUs that have reached their first KVM_RUN
	running    chan struct{} // closed when every vCPU has (Running)
	watch      []vcpuWatch   // per vCPU, for Dump (dump.go)
	stats      kvmStats      // KVM's own counters of the VM and vCPUs, for Dump
	dumpMu     sync.Mutex    // one Dump at a time: their kicks and answers would cross
}

// pvpanicPort is QEMU's pvpanic ISA port, described to the guest as an
// ACPI QEMU0001 device: Linux's pvpanic driver writes 1 to it when the
// kernel panics, which is how a crash is told apart from a reboot.
const pvpanicPort = 0x505

// resetStub is the only "firmware" the VMM provides: real-mode code at the
// x86 reset vector (F000:FFF0) that asks for a reset through the ACPI reset
// register. A guest reaches it when it reboots the way a PC BIOS expects:
// Linux does so on hardware-reduced ACPI machines without EFI, where it
// picks EFI and then BIOS reboot over the reset register (unless booted
// with reboot=k or reboot=a).
var resetStub = []byte{
	0xBA, layout.ResetPort & 0xFF, layout.ResetPort >> 8, // mov dx, ResetPort
	0xB0, 0x06, // mov al, 6 (reset CPU, hard)
	0xEE,       // out dx, al
	0xF4,       // hlt
	0xEB, 0xFD, // jmp hlt
}

// Where KVM puts the TSS and identity map Intel's VMX needs in real mode:
// the top of the 32-bit hole, clear of the LAPIC and IOAPIC.
const (
	tssAddr      = 0xFFFB_D000
	identityAddr = 0xFFFB_C000
)

// kickSignal interrupts a vCPU thread blocked in KVM_RUN. It is the signal
// the Go runtime itself preempts threads with (SIGURG): the runtime always
// handles it (so it interrupts KVM_RUN, which returns EINTR) and expects it
// at any time, and no os/signal channel receives it, so that SIGUSR1 and
// SIGUSR2 stay free for the VMM process's own use (SIGUSR1 asks for a
// Dump, and a kick must not look like one).
const kickSignal = unix.SIGURG

// New creates the VM: checks the request against the kernel image and KVM,
// creates memory, loads the kernel, writes ACPI tables, wires the devices
// and sets up every vCPU. Errors are one line saying what is wrong.
func New(cfg Config) (*Machine, error) {
	if cfg.CPUs < 1 {
		return nil, fmt.Errorf("cpus %d: want at least 1", cfg.CPUs)
	}
	if cfg.Console == nil {
		cfg.Console = io.Discard
	}
	k, err := boot.ParseKernel(cfg.Kernel)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	need, err := k.MinRAM(uint64(len(cfg.Initrd)))
	if err != nil {
		return nil, err
	}
	if cfg.Memory < need {
		what := "the kernel"
		if len(cfg.Initrd) > 0 {
			what = fmt.Sprintf("the kernel and its %d MiB initrd", (len(cfg.Initrd)+(1<<20)-1)>>20)
		}
		return nil, fmt.Errorf("memory %d MiB too small: %s need at least %d MiB", cfg.Memory>>20, what, need>>20)
	}
	m := &Machine{trace: cfg.Trace}
	if err := m.build(cfg, k); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// buildStep is one step of build and how long it took.
type buildStep struct {
	name string
	d    time.Duration
}

// BuildSteps says how long each step of building the machine took
// ("kvm=1ms memory=2ms ..."): where a VM's start goes before its vCPUs run.
func (m *Machine) BuildSteps() string {
	parts := make([]string, len(m.steps))
	for i, s := range m.steps {
		parts[i] = fmt.Sprintf("%s=%s", s.name, s.d.Round(10*time.Microsecond))
	}
	return strings.Join(parts, " ")
}

func (m *Machine) build(cfg Config, k *boot.Kernel) (err error) {
	last := time.Now()
	step := func(name string) {
		now := time.Now()
		m.steps = append(m.steps, buildStep{name, now.Sub(last)})
		last = now
	}
	if m.sys, err = kvm.Open(); err != nil {
		return err
	}
	maxCPUs, err := m.sys.CheckExtension(kvm.CapMaxVCPUs)
	if err != nil || maxCPUs == 0 {
		maxCPUs, _ = m.sys.CheckExtension(kvm.CapNrVCPUs)
	}
	if maxCPUs > 0 && cfg.CPUs > maxCPUs {
		return fmt.Errorf("cpus %d: this host's KVM allows at most %d vCPUs per VM", cfg.CPUs, maxCPUs)
	}
	if m.vm, err = m.sys.CreateVM(); err != nil {
		return err
	}
	m.x2apic = cfg.CPUs > x2APICCPUs
	if m.x2apic {
		// 32-bit APIC ids in KVM's MSI routes and LAPIC state, and 0xFF
		// an id like any other rather than a broadcast.
		if err := m.vm.EnableCap(kvm.CapX2APICAPI, kvm.X2APICAPIUse32BitIDs|kvm.X2APICAPIDisableBroadcastQuirk); err != nil {
			return fmt.Errorf("cpus %d: more than %d need x2APIC ids: %w", cfg.CPUs, x2APICCPUs, err)
		}
	}
	for _, step := range []func() error{
		func() error { return m.vm.SetTSSAddr(tssAddr) },
		func() error { return m.vm.SetIdentityMapAddr(identityAddr) },
		m.vm.CreateIRQChip,
		m.vm.CreatePIT2,
	} {
		if err := step(); err != nil {
			return err
		}
	}
	if len(cfg.NodeCPUs) > 0 && len(cfg.NodeCPUs) != len(cfg.MemNodes) {
		return fmt.Errorf("numa: %d nodes of vCPUs, %d of memory", len(cfg.NodeCPUs), len(cfg.MemNodes))
	}
	step("kvm")
	if m.mem, err = memory.New(cfg.Memory, memory.Options{HugePages: cfg.HugePages, Nodes: cfg.MemNodes}); err != nil {
		return err
	}
	if m.slots.next, err = m.mem.Register(m.vm, 0); err != nil {
		return err
	}
	step("memory")
	m.slots.vm = m.vm
	// The PCI bus owns ports 0xCF8-0xCFF and passes the reset register
	// at 0xCF9 on; the DSDT describes its host bridge.
	mmio64, mmio64Size := pci.MMIO64Window(cfg.Memory)
	m.pci, err = pci.New(pci.Options{MMIO64Base: mmio64, MMIO64Size: mmio64Size, Reset: power.NewReset(m.reboot),
		Errors: func(err error) { fmt.Fprintln(os.Stderr, "vmm:", err) }})
	if err != nil {
		return err
	}
	var numa []acpi.NUMANode
	if len(cfg.NodeCPUs) > 0 {
		for i, r := range memory.NodeRanges(cfg.Memory, cfg.MemNodes) {
			n := acpi.NUMANode{CPUs: cfg.NodeCPUs[i], Memory: r}
			if i < len(cfg.NodeDistances) {
				n.Distance = cfg.NodeDistances[i]
			}
			numa = append(numa, n)
		}
	}
	tables, rsdpOff, err := acpi.Build(acpi.Config{CPUs: cfg.CPUs, MCFG: true, NUMA: numa,
		Devices: append(platformDevices(), m.pci.AML())})
	if err != nil {
		return fmt.Errorf("acpi: %w", err)
	}
	step("acpi")
	if uint64(len(tables)) > layout.ResetVector-layout.ACPIStart {
		return fmt.Errorf("acpi: %d bytes of tables reach the reset vector", len(tables))
	}
	if err := m.mem.WriteAt(tables, layout.ACPIStart); err != nil {
		return fmt.Errorf("acpi: %w", err)
	}
	if err := m.mem.WriteAt(resetStub, layout.ResetVector); err != nil {
		return err
	}
	step("firmware")
	cpu, err := boot.Load(m.mem, k, boot.Config{
		RAMSize: cfg.Memory, Cmdline: guestCmdline(cfg.Cmdline, m.x2apic), Initrd: cfg.Initrd, RSDP: layout.ACPIStart + rsdpOff,
		Reserved: [][2]uint64{pci.ECAMReserved()},
	})
	if err != nil {
		return err
	}
	step("load")
	if err := m.devices(cfg); err != nil {
		return err
	}
	step("devices")
	supported, err := m.sys.SupportedCPUID()
	if err != nil {
		return err
	}
	// KVM nested under QEMU's TCG cannot follow the guest's XCR0 (see
	// cpuid.HostIsTCG): such a guest must not be offered XSAVE.
	if cpuid.HasXSAVE(supported) && cpuid.HostIsTCG() {
		supported = cpuid.WithoutXSAVE(supported)
	}
	// The irqchip is KVM's (CreateIRQChip above), whose local APIC has
	// the TSC-deadline timer KVM_GET_SUPPORTED_CPUID leaves out.
	if n, err := m.sys.CheckExtension(kvm.CapTSCDeadlineTimer); err == nil && n > 0 {
		supported = cpuid.WithTSCDeadline(supported)
	}
	for i := 0; i < cfg.CPUs; i++ {
		v, err := m.vm.CreateVCPU(i)
		if err != nil {
			return err
		}
		m.vcpus = append(m.vcpus, v)
		if err := setupVCPU(v, cpuid.ForVCPU(supported, i, cfg.CPUs), i == 0, m.x2apic, cpu); err != nil {
			return fmt.Errorf("vCPU %d: %w", i, err)
		}
	}
	m.tids = make([]int, cfg.CPUs)
	m.watch = newWatches(cfg.CPUs)
	m.stats.open(m.vm, m.vcpus)
	step("vcpus")
	return nil
}

// line is an interrupt pin of KVM's in-kernel IOAPIC/PIC.
func (m *Machine) line(gsi uint32) irq.Line {
	return irq.Func(func(level bool) error { return m.vm.IRQLine(gsi, level) })
}

func (m *Machine) devices(cfg Config) error {
	if cfg.Trace {
		m.pio.Miss = func(addr uint64, write bool, data []byte) {
			fmt.Fprintf(os.Stderr, "vmm: unclaimed port %#x write=%v % x\n", addr, write, data)
		}
		m.mmio.Miss = func(addr uint64, write bool, data []byte) {
			fmt.Fprintf(os.Stderr, "vmm: unclaimed mmio %#x write=%v % x\n", addr, write, data)
		}
	}
	// Buffered: one write per guest line instead of one per byte, and a
	// vCPU never waits on a slow console reader for long (serial.Buffer).
	m.console = serial.NewBuffer(cfg.Console, serial.BufferOptions{})
	m.serial = serial.New(serial.Options{Out: m.console, IRQ: m.line(layout.COM1IRQ)})
	m.ged = power.NewGED(m.line(layout.GEDIRQ))
	ports := []struct {
		dev        bus.Device
		base, size uint64
	}{
		{m.serial, layout.COM1Port, 8},
		{i8042.New(i8042.Options{Reset: m.reboot, KbdIRQ: m.line(layout.I8042KbdIRQ), AuxIRQ: m.line(layout.I8042AuxIRQ)}), layout.I8042Port, i8042.Size},
		{rtc.New(rtc.Options{}), layout.RTCPort, 2},
		{power.NewSleep(func() { m.stop(Result{ExitPoweroff, "guest powered off (ACPI S5)"}) }), layout.SleepCtlPort, power.SleepSize},
		{m.pci.Conf1(), layout.PCIConfAddr, pci.Conf1Size},
		{pvpanic{m}, pvpanicPort, 1},
	}
	for _, p := range ports {
		if err := m.pio.Insert(p.dev, p.base, p.size); err != nil {
			return err
		}
	}
	// PCI: the ECAM and the BAR windows.
	for _, w := range append(m.pci.Windows(), pci.Window{Base: layout.ECAMStart, Size: layout.ECAMSize, Device: m.pci.ECAM()}) {
		if err := m.mmio.Insert(w.Device, w.Base, w.Size); err != nil {
			return err
		}
	}
	if err := m.mmio.Insert(m.ged, layout.GEDAddr, layout.GEDSize); err != nil {
		return err
	}
	if err := m.virtioDevices(cfg); err != nil {
		return err
	}
	return m.passthrough(cfg)
}

func (m *Machine) reboot() { m.stop(Result{ExitReboot, "guest reset"}) }

// pvpanic is the guest's panic notifier port.
type pvpanic struct{ m *Machine }

func (p pvpanic) Read(_ uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) > 0 {
		data[0] = 1 // supported events: PANICKED
	}
}

func (p pvpanic) Write(_ uint64, data []byte) {
	if len(data) > 0 && data[0]&1 != 0 {
		p.m.stop(Result{ExitCrash, "guest kernel panic (pvpanic)"})
	}
}

// MSRs every vCPU starts with: fast strings on, as firmware leaves them,
// and MTRRs enabled with write-back as the default type, without which
// Linux maps all RAM uncached.
var bootMSRs = []kvm.MSREntry{
	{Index: 0x1a0, Data: 1},           // IA32_MISC_ENABLE: fast strings
	{Index: 0x2ff, Data: 1<<11 | 0x6}, // IA32_MTRR_DEF_TYPE: enabled, write-back
}

func setupVCPU(v *kvm.VCPU, ids []kvm.CPUIDEntry, bsp, x2apic bool, cpu boot.CPU) error {
	if err := v.SetCPUID2(ids); err != nil {
		return err
	}
	msrs := bootMSRs
	if x2apic {
		// Before the LAPIC is read and written below, which KVM does
		// in the format of the APIC's mode.
		msrs = append(slices.Clip(msrs), kvm.MSREntry{Index: msrAPICBase, Data: apicBase(bsp)})
	}
	if err := v.SetMSRs(msrs); err != nil {
		return err
	}
	fpu := kvm.FPU{FCW: 0x37f, MXCSR: 0x1f80}
	if err := v.SetFPU(fpu); err != nil {
		return err
	}
	// LINT0 delivers the legacy PIC's interrupts (ExtINT), LINT1 NMIs, as
	// a PC's firmware programs them.
	l, err := v.LAPIC()
	if err != nil {
		return err
	}
	setLVT(&l, 0x350, 7) // LINT0: ExtINT
	setLVT(&l, 0x360, 4) // LINT1: NMI
	if err := v.SetLAPIC(l); err != nil {
		return err
	}
	if !bsp {
		return nil // application processors wait for INIT/SIPI from the BSP
	}
	s, err := v.Sregs()
	if err != nil {
		return err
	}
	s.CS, s.DS, s.ES, s.FS = segment(cpu.CS), segment(cpu.DS), segment(cpu.ES), segment(cpu.FS)
	s.GS, s.SS, s.TR = segment(cpu.GS), segment(cpu.SS), segment(cpu.TR)
	s.GDT = kvm.DTable{Base: cpu.GDT.Base, Limit: cpu.GDT.Limit}
	s.IDT = kvm.DTable{Base: cpu.IDT.Base, Limit: cpu.IDT.Limit}
	s.CR0, s.CR3, s.CR4, s.EFER = cpu.CR0, cpu.CR3, cpu.CR4, cpu.EFER
	if err := v.SetSregs(s); err != nil {
		return err
	}
	return v.SetRegs(kvm.Regs{RIP: cpu.RIP, RSP: cpu.RSP, RSI: cpu.RSI, RFLAGS: cpu.RFLAGS})
}

// x2APICCPUs is how many vCPUs xAPIC ids reach: 0-254, 0xFF being the
// broadcast id. A VM with more starts every vCPU with its local APIC in
// x2APIC mode (IA32_APIC_BASE.EXTD), as firmware leaves a large machine:
// Linux takes the MADT's x2APIC entries, those of the CPUs from 255 on,
// only when its boot CPU's APIC is in x2APIC mode as it reads them, and
// logs "x2apic entry ignored" otherwise. With no interrupt remapping, the
// guest then addresses those CPUs in MSIs through the extended
// destination id KVM's CPUID offers (KVM_FEATURE_MSI_EXT_DEST_ID), which
// the VMM moves where KVM reads it (gsiRoutes.message).
const x2APICCPUs = 255

const (
	msrAPICBase  = 0x1b
	apicBaseBSP  = 1 << 8
	apicBaseEXTD = 1 << 10 // x2APIC mode
	apicBaseEN   = 1 << 11
)

// apicBase is IA32_APIC_BASE of a vCPU in x2APIC mode.
func apicBase(bsp bool) uint64 {
	v := uint64(layout.LAPICAddr) | apicBaseEN | apicBaseEXTD
	if bsp {
		v |= apicBaseBSP
	}
	return v
}

// guestCmdline is the command line the guest gets. With x2APIC ids it
// keeps the guest's interrupts on CPUs 0-254 by default (irqaffinity=,
// unless the configuration sets one): KVM's in-kernel IOAPIC, which
// carries the serial port's, the keyboard controller's and the power
// button's interrupts, has 8-bit destinations, so one of them steered to
// a CPU above 254 would reach CPU (id mod 256) instead. MSIs, the virtio
// devices', reach every vCPU, and the guest may steer them anywhere.
func guestCmdline(cmdline string, x2apic bool) string {
	if !x2apic {
		return cmdline
	}
	for _, f := range strings.Fields(cmdline) {
		if strings.HasPrefix(f, "irqaffinity=") {
			return cmdline
		}
	}
	return strings.TrimSpace(cmdline + fmt.Sprintf(" irqaffinity=0-%d", x2APICCPUs-1))
}

func setLVT(l *kvm.LAPIC, reg int, mode uint32) {
	v := uint32(l.Regs[reg]) | uint32(l.Regs[reg+1])<<8 | uint32(l.Regs[reg+2])<<16 | uint32(l.Regs[reg+3])<<24
	v = v&^0x700 | mode<<8
	l.Regs[reg], l.Regs[reg+1], l.Regs[reg+2], l.Regs[reg+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

func segment(s boot.Segment) kvm.Segment {
	b := func(v bool) uint8 {
		if v {
			return 1
		}
		return 0
	}
	return kvm.Segment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type,
		Present: b(s.Present), DPL: s.DPL, DB: b(s.DB), S: b(s.S), L: b(s.L), G: b(s.G)}
}

// Run runs every vCPU on its own OS thread until the guest powers off,
// resets or crashes, or Stop is called, and reports which.
func (m *Machine) Run() Result {
	m.mu.Lock()
	if len(m.watch) != len(m.vcpus) { // a Machine assembled by hand (tests)
		m.watch = newWatches(len(m.vcpus))
	}
	m.mu.Unlock()
	if m.trace { // dump every vCPU's registers every 3 s, to see where a guest hangs
		go func() {
			for !m.stopping() {
				time.Sleep(3 * time.Second)
				m.mu.Lock()
				for i, tid := range m.tids {
					if tid != 0 {
						m.vcpus[i].SetImmediateExit(true)
						unix.Tgkill(os.Getpid(), tid, kickSignal)
					}
				}
				m.mu.Unlock()
			}
		}()
	}
	// vCPUs keep their P in the guest (kvm.VCPU.SetHoldP), and devices'
	// notification goroutines theirs while they wait, when the process
	// has one for each of them (Procs).
	hold := runtime.GOMAXPROCS(0) >= m.Procs()
	for _, v := range m.vcpus {
		v.SetHoldP(hold)
	}
	for _, t := range m.virtio {
		t.SetHoldP(hold)
	}
	var wg sync.WaitGroup
	for i, v := range m.vcpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.runVCPU(i, v)
		}()
	}
	wg.Wait()
	// Whatever the exit (poweroff, reset, crash, Stop), the guest's last
	// partial line reaches the console, ended, before the VMM reports
	// the exit on a line of its own.
	if m.console != nil {
		_ = m.console.EndLine()
	}
	return m.result
}

// Procs is the GOMAXPROCS under which the machine's threads that wait in
// system calls keep their Ps while they wait (kvm.VCPU.SetHoldP,
// virtiopci.Transport.SetHoldP): one per vCPU, one per virtio-pci device
// with a notification goroutine (not a vhost-user NIC, whose kicks the
// switch serves), and one for everything else. With fewer, Run leaves them
// giving their Ps up in every wait.
func (m *Machine) Procs() int {
	n := len(m.vcpus) + 1
	for _, t := range m.virtio {
		if t.Kicks() {
			n++
		}
	}
	return n
}

// runVCPU is vCPU i's goroutine, on a thread of its own: locked, and never
// unlocked, so that when it ends the runtime ends the thread too, with
// what was done to it (its name, its CPU affinity, whatever OnVCPUThread
// set) instead of handing it to other goroutines.
func (m *Machine) runVCPU(i int, v *kvm.VCPU) {
	runtime.LockOSThread()
	// Named, so that the host's tools (top -H, /proc/<pid>/task/*/comm)
	// and the supervisor's pinning report tell vCPU threads apart.
	unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&vcpuName(i)[0])), 0, 0, 0)
	for _, f := range m.vcpuThread {
		if err := f(i); err != nil {
			m.stop(Result{ExitCrash, fmt.Sprintf("vCPU %d: %v", i, err)})
			return
		}
	}

	m.mu.Lock()
	if m.tids == nil {
		// The machine stopped before this goroutine got here (Stop before
		// Run, or another vCPU's guest powered off or crashed at once):
		// stop has cleared tids, and this vCPU must not enter the guest.
		m.mu.Unlock()
		return
	}
	m.tids[i] = unix.Gettid()
	w := &m.watch[i]
	if m.started++; m.started == len(m.vcpus) {
		close(m.runningChan())
	}
	m.mu.Unlock()
	for {
		w.inGuest.Store(true)
		exit, err := v.Run()
		w.inGuest.Store(false)
		w.exits.Add(1)
		w.lastExit.Store(uint32(exit))
		switch exit {
		case kvm.ExitIO:
			w.io.Add(1)
		case kvm.ExitMMIO:
			w.mmio.Add(1)
		}
		if exit == kvm.ExitIntr {
			m.answerDump(i, v) // if Dump kicked it
		}
		if err != nil {
			m.stop(Result{ExitCrash, err.Error()})
			return
		}
		if m.trace && exit == kvm.ExitIO {
			if io, ok := v.IO(); ok && io.Port != 0x3f8 && io.Port != 0x3fd && io.Port != 0x80 {
				fmt.Fprintf(os.Stderr, "vmm: io out=%v %#x % x\n", io.Out, io.Port, io.Data)
			}
		}
		if v.Dispatch(exit, &m.pio, &m.mmio) {
			continue
		}
		if m.trace && exit == kvm.ExitIntr && !m.stopping() {
			r, _ := v.Regs()
			sr, _ := v.Sregs()
			fmt.Fprintf(os.Stderr, "vmm: vcpu %d rip=%#x rsp=%#x rflags=%#x cr0=%#x cr3=%#x\n", i, r.RIP, r.RSP, r.RFLAGS, sr.CR0, sr.CR3)
			v.SetImmediateExit(false)
		}
		switch exit {
		case kvm.ExitIntr, kvm.ExitHLT, kvm.ExitIRQWindowOpen:
			// HLT only reaches userspace without an in-kernel LAPIC; a
			// kick or Go's preemption signal interrupts KVM_RUN.
		case kvm.ExitShutdown:
			m.stop(Result{ExitCrash, fmt.Sprintf("vCPU %d: triple fault", i)})
		case kvm.ExitSystemEvent:
			typ, _, _ := v.SystemEvent()
			switch typ {
			case kvm.SystemEventShutdown:
				m.stop(Result{ExitPoweroff, "system event shutdown"})
			case kvm.SystemEventReset:
				m.stop(Result{ExitReboot, "system event reset"})
			default:
				m.stop(Result{ExitCrash, fmt.Sprintf("vCPU %d: system event %d", i, typ)})
			}
		case kvm.ExitFailEntry:
			reason, _, _ := v.FailEntry()
			m.stop(Result{ExitCrash, fmt.Sprintf("vCPU %d: KVM could not enter the guest (hardware reason %#x)", i, reason)})
		case kvm.ExitInternalError:
			ie, _ := v.InternalError()
			m.stop(Result{ExitCrash, fmt.Sprintf("vCPU %d: KVM internal error %+v", i, ie)})
		default:
			m.stop(Result{ExitCrash, fmt.Sprintf("vCPU %d: unhandled exit %v", i, exit)})
		}
		if m.stopping() {
			return
		}
	}
}

func (m *Machine) stopping() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.tids == nil
}

// stop ends Run with r; the first reason wins. Every vCPU is told to exit
// at once (immediate_exit) and its thread is kicked out of KVM_RUN.
func (m *Machine) stop(r Result) {
	m.stopOnce.Do(func() {
		m.result = r
		m.mu.Lock()
		tids := m.tids
		m.tids = nil
		// Under the lock, so that answerDump cannot clear it again.
		for _, v := range m.vcpus {
			v.SetImmediateExit(true)
		}
		m.mu.Unlock()
		// A vCPU thread may be between the check and KVM_RUN: kick until
		// all have left (Run returns once every goroutine has).
		go func() {
			for try := 0; try < 50; try++ {
				for _, tid := range tids {
					if tid != 0 {
						unix.Tgkill(os.Getpid(), tid, kickSignal)
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	})
}

// Running is closed once every vCPU's thread is about to enter the guest
// for the first time: with Run's start, how long a machine of many vCPUs
// takes to get going.
func (m *Machine) Running() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.runningChan()
}

func (m *Machine) runningChan() chan struct{} {
	if m.running == nil {
		m.running = make(chan struct{})
	}
	return m.running
}

// OnVCPUThread has f called on each vCPU's thread, locked to it, with the
// vCPU's index, before the vCPU first enters the guest: the VMM places the
// thread there (its CPU affinity) and confines it (its seccomp filter).
// Functions run in the order they were given, so what confines the thread
// comes last. An error stops the machine. Call it before Run.
func (m *Machine) OnVCPUThread(f func(i int) error) { m.vcpuThread = append(m.vcpuThread, f) }

// vcpuName is vCPU i's thread name, NUL-terminated for PR_SET_NAME.
func vcpuName(i int) []byte { return []byte(fmt.Sprintf("vcpu%d\x00", i)) }

// Stop ends Run without waiting for the guest.
func (m *Machine) Stop() { m.stop(Result{ExitStopped, "stopped by the VMM"}) }

// PowerButton presses the guest's ACPI power button.
func (m *Machine) PowerButton() { m.ged.PowerButton() }

// ConsoleDropped reports how many bytes of the guest's console output were
// dropped because its reader stayed a whole buffer behind (serial.Buffer).
func (m *Machine) ConsoleDropped() uint64 {
	if m.console == nil {
		return 0
	}
	return m.console.Dropped()
}

// Input queues bytes for the guest's console, the virtio console when
// the guest has one (its command line names hvc0) and the UART otherwise;
// it returns how many
// were taken (the rest are dropped when the guest does not read).
func (m *Machine) Input(p []byte) int {
	if m.vcon != nil {
		return m.vcon.Input(p)
	}
	return m.serial.Input(p)
}

// Close releases the VM.
func (m *Machine) Close() error {
	errs := []error{m.closeVFIO(), m.closeVirtio()}
	if m.console != nil {
		errs = append(errs, m.console.Close())
	}
	errs = append(errs, m.stats.close())
	for _, v := range m.vcpus {
		errs = append(errs, v.Close())
	}
	if m.vm != nil {
		errs = append(errs, m.vm.Close())
	}
	if m.mem != nil {
		errs = append(errs, m.mem.Close())
	}
	if m.sys != nil {
		errs = append(errs, m.sys.Close())
	}
	return errors.Join(errs...)
}
