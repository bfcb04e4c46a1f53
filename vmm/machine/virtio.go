package machine

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/eventfd"
	"github.com/hyperroot/hyperroot/vmm/block"
	"github.com/hyperroot/hyperroot/vmm/block/qcow2"
	"github.com/hyperroot/hyperroot/vmm/cpuid"
	"github.com/hyperroot/hyperroot/vmm/kvm"
	"github.com/hyperroot/hyperroot/vmm/pci"
	"github.com/hyperroot/hyperroot/vmm/ratelimit"
	"github.com/hyperroot/hyperroot/vmm/virtio"
	"github.com/hyperroot/hyperroot/vmm/virtio/blk"
	vconsole "github.com/hyperroot/hyperroot/vmm/virtio/console"
	virtionet "github.com/hyperroot/hyperroot/vmm/virtio/net"
	virtiopci "github.com/hyperroot/hyperroot/vmm/virtio/pci"
	"github.com/hyperroot/hyperroot/vmm/virtio/rng"
)

// firstMSIGSI is the first GSI handed to MSI-X vectors: 0-23 are the
// IOAPIC's pins (and 0-15 the PICs').
const firstMSIGSI = 24

// irqChip is what MSI routing needs of the VM; *kvm.VM implements it, and
// tests fake it to drive the routers without /dev/kvm.
type irqChip interface {
	SetGSIRouting(routes []kvm.Route) error
	IRQFD(fd int, gsi uint32, resampleFd int, deassign bool) error
}

// gsiRoutes owns the VM's GSI routing table. KVM_SET_GSI_ROUTING replaces
// the whole table, including the default legacy routes KVM set up with
// the irqchip, so every update sends those again along with one MSI route
// per routed MSI-X vector.
type gsiRoutes struct {
	vm   irqChip
	mu   sync.Mutex
	next uint32
	msi  map[uint32]kvm.MSI
	// extDestID: KVM takes 32-bit destinations (KVM_CAP_X2APIC_API),
	// and the guest's extended ids must be moved (message).
	extDestID bool
}

func newGSIRoutes(vm irqChip) *gsiRoutes {
	return &gsiRoutes{vm: vm, next: firstMSIGSI, msi: map[uint32]kvm.MSI{}}
}

// legacyRoutes is KVM's default routing (arch/x86/kvm/irq_comm.c): GSI n to
// IOAPIC pin n for n < 24, and for n < 16 also to pin n%8 of the master
// (n < 8) or slave PIC.
func legacyRoutes() []kvm.Route {
	var rs []kvm.Route
	for gsi := uint32(0); gsi < 24; gsi++ {
		rs = append(rs, kvm.Route{GSI: gsi, Type: kvm.RouteIRQChip, Chip: kvm.IRQChipIOAPIC, Pin: gsi})
		if gsi < 16 {
			chip := kvm.IRQChipPICMaster
			if gsi >= 8 {
				chip = kvm.IRQChipPICSlave
			}
			rs = append(rs, kvm.Route{GSI: gsi, Type: kvm.RouteIRQChip, Chip: chip, Pin: gsi % 8})
		}
	}
	return rs
}

// message is the MSI route KVM gets for what the guest wrote into an
// MSI-X entry. With x2APIC ids, a guest without interrupt remapping puts
// bits 8-14 of an APIC id above 255 into bits 5-11 of the address, where
// an x86 MSI address has reserved bits (the extended destination id of
// KVM_FEATURE_MSI_EXT_DEST_ID); KVM reads bits 8-31 of the id from the
// upper half of the address instead, so they move there. An address whose
// upper half is already set is left for KVM to judge.
func (g *gsiRoutes) message(addr uint64, data uint32) kvm.MSI {
	if ext := addr >> 5 & 0x7f; g.extDestID && ext != 0 && addr>>32 == 0 {
		addr = addr&^(0x7f<<5) | ext<<40
	}
	return kvm.MSI{Addr: addr, Data: data}
}

// alloc reserves a GSI for an MSI-X vector.
func (g *gsiRoutes) alloc() uint32 {
	g.mu.Lock()
	defer g.mu.Unlock()
	gsi := g.next
	g.next++
	return gsi
}

// set routes gsi to msg and pushes the table to KVM. If KVM refuses the
// table, gsi keeps its previous route (or none): the message is the
// guest's, and keeping a refused one would make every later update of any
// vector of the VM, which sends the whole table again, fail with it.
func (g *gsiRoutes) set(gsi uint32, msg kvm.MSI) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	old, had := g.msi[gsi]
	g.msi[gsi] = msg
	rs := legacyRoutes()
	for gsi, m := range g.msi {
		rs = append(rs, kvm.Route{GSI: gsi, Type: kvm.RouteMSI, MSI: m})
	}
	if err := g.vm.SetGSIRouting(rs); err != nil {
		if had {
			g.msi[gsi] = old
		} else {
			delete(g.msi, gsi)
		}
		return fmt.Errorf("GSI routing of %#x/%#x: %w", msg.Addr, msg.Data, err)
	}
	return nil
}

// msiRouter is one device's pci.MSIRouter: each vector gets a GSI with an
// MSI route and an eventfd bound to it as a KVM irqfd, so that signalling
// a vector is one eventfd write and KVM injects the interrupt. The same
// eventfds can later be handed to a vhost-user backend.
type msiRouter struct {
	routes *gsiRoutes
	vm     irqChip
	// max is how many vectors the device's MSI-X capability has: a vector
	// outside them gets no GSI and no eventfd whoever asks. 0 means the
	// most MSI-X allows (2048).
	max     int
	mu      sync.Mutex
	vectors []*msiVector
}

type msiVector struct {
	gsi      uint32
	fd       int
	msg      kvm.MSI
	routed   bool // msg is in the routing table
	attached bool // fd is bound to gsi as an irqfd
}

// vector returns vector v, creating its GSI and eventfd on first use.
// The caller holds r.mu.
func (r *msiRouter) vector(v int) (*msiVector, error) {
	limit := r.max
	if limit <= 0 || limit > 2048 {
		limit = 2048
	}
	if v < 0 || v >= limit {
		return nil, fmt.Errorf("MSI-X vector %d out of range (%d vectors)", v, limit)
	}
	for len(r.vectors) <= v {
		r.vectors = append(r.vectors, nil)
	}
	if r.vectors[v] == nil {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			return nil, fmt.Errorf("MSI-X vector %d: eventfd: %w", v, err)
		}
		r.vectors[v] = &msiVector{gsi: r.routes.alloc(), fd: fd}
	}
	return r.vectors[v], nil
}

// Route follows the guest's programming of vector v. Unmasked, the vector's
// GSI carries its message and the irqfd is attached; masked, the irqfd is
// detached so that signals wait in the eventfd until the guest unmasks
// (KVM injects a pending eventfd when the irqfd is attached again).
func (r *msiRouter) Route(v int, addr uint64, data uint32, masked bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	vec, err := r.vector(v)
	if err != nil {
		return err
	}
	if masked {
		if vec.attached {
			if err := r.vm.IRQFD(vec.fd, vec.gsi, -1, true); err != nil {
				return fmt.Errorf("MSI-X vector %d: detach irqfd: %w", v, err)
			}
			vec.attached = false
		}
		return nil
	}
	msg := r.routes.message(addr, data)
	if !vec.routed || vec.msg != msg {
		if err := r.routes.set(vec.gsi, msg); err != nil {
			return fmt.Errorf("MSI-X vector %d: %w", v, err)
		}
		vec.msg, vec.routed = msg, true
	}
	if !vec.attached {
		if err := r.vm.IRQFD(vec.fd, vec.gsi, -1, false); err != nil {
			return fmt.Errorf("MSI-X vector %d: attach irqfd: %w", v, err)
		}
		vec.attached = true
	}
	return nil
}

// EventFD implements virtiopci.IRQFDs: vector v's irqfd, which a
// vhost-user backend writes to interrupt the guest directly.
func (r *msiRouter) EventFD(v int) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	vec, err := r.vector(v)
	if err != nil {
		return -1, err
	}
	return vec.fd, nil
}

// Signal raises vector v through its irqfd.
func (r *msiRouter) Signal(v int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	vec, err := r.vector(v)
	if err != nil {
		return err
	}
	if err := eventfd.Signal(vec.fd); err != nil {
		return fmt.Errorf("MSI-X vector %d: signal: %w", v, err)
	}
	return nil
}

func (r *msiRouter) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, vec := range r.vectors {
		if vec != nil {
			errs = append(errs, unix.Close(vec.fd))
		}
	}
	r.vectors = nil
	return errors.Join(errs...)
}

// ioEvents binds virtqueue notify addresses to eventfds with KVM
// ioeventfds (virtiopci.Notifier): a guest's kick then signals the eventfd
// inside KVM instead of exiting to a vCPU thread.
type ioEvents struct {
	vm *kvm.VM
	// width is the access width matched: 0 (any) where KVM supports it,
	// else 2, the width of the queue index drivers write; other widths
	// then exit and reach the transport's MMIO fallback.
	width uint32
}

func (e ioEvents) Watch(gpa uint64, fd int) error {
	return e.vm.IOEventFD(fd, kvm.IOEvent{Addr: gpa, Len: e.width}, false)
}

func (e ioEvents) Unwatch(gpa uint64, fd int) error {
	return e.vm.IOEventFD(fd, kvm.IOEvent{Addr: gpa, Len: e.width}, true)
}

// virtioDevices puts the VM's virtio devices on the PCI bus: a virtio-rng,
// so that the guest has a good entropy source from its first second, then
// one virtio-blk per disk.
func (m *Machine) virtioDevices(cfg Config) error {
	width := uint32(2)
	if n, err := m.vm.CheckExtension(kvm.CapIOEventFDAnyLen); err == nil && n > 0 {
		width = 0
	}
	m.gsi = newGSIRoutes(m.vm)
	m.gsi.extDestID = m.x2apic
	// The devices' errors during guest accesses: the transports' and the
	// disks' requests'.
	m.errlog = newErrorLog(os.Stderr, nil)
	if err := m.attach("virtio-rng", rng.New(rng.Options{}), width); err != nil {
		return err
	}
	// A guest whose console is hvc0 gets a virtio console beside the
	// UART (which keeps the kernel's first lines, before the driver
	// loads): a write() there is one buffer and one notification, where
	// the UART costs an exit a byte.
	if hvcConsole(cfg.Cmdline) {
		m.vcon = vconsole.New(vconsole.Options{Out: m.console})
		if err := m.attach("virtio-console", m.vcon, width); err != nil {
			return err
		}
	}
	for i, d := range cfg.Disks {
		dev, err := m.disk(d, cfg.CPUs, func(err error) { m.errlog.report(fmt.Errorf("disk %d: %w", i, err)) })
		if err != nil {
			return fmt.Errorf("disk %d: %w", i, err)
		}
		m.disks = append(m.disks, dev)
		if err := m.attach(fmt.Sprintf("disk %d: virtio-blk", i), dev, width); err != nil {
			return err
		}
	}
	for i, n := range cfg.NICs {
		dev, err := virtionet.New(virtionet.Options{Dial: n.Dial, Memory: m.mem, MAC: n.MAC, MTU: n.MTU,
			Logf: func(format string, args ...any) { fmt.Fprintf(os.Stderr, "vmm: "+format+"\n", args...) }})
		if err != nil {
			return fmt.Errorf("nic %d: %w", i, err)
		}
		m.nics = append(m.nics, dev)
		if err := m.attach(fmt.Sprintf("nic %d: virtio-net", i), dev, width); err != nil {
			return err
		}
	}
	return nil
}

// attach puts dev behind its own virtio-pci transport on the PCI bus,
// with its own MSI-X router and ioeventfd kicks.
func (m *Machine) attach(name string, dev virtio.Device, width uint32) error {
	logf := m.errlog.report
	// One vector per queue and one for configuration changes, as the
	// transport's MSI-X capability has.
	router := &msiRouter{routes: m.gsi, vm: m.vm, max: len(dev.QueueSizes()) + 1}
	m.routers = append(m.routers, router)
	t, err := virtiopci.New(dev, virtiopci.Options{
		Memory: m.mem, Router: router, Notifier: ioEvents{m.vm, width}, Errors: logf,
	})
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	m.virtio, m.vnames = append(m.virtio, t), append(m.vnames, name)
	slot, err := m.pci.Add(t)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	t.SetINTx(m.line(pci.INTxGSI(slot, 1)))
	return nil
}

// maxDiskQueues bounds a disk's request queues. One queue per vCPU lets
// each vCPU submit without contending for a ring, but every queue costs a
// worker goroutine, an eventfd, an MSI-X vector and Depth backend slots;
// past four, a single image file is the bottleneck anyway.
const maxDiskQueues = 4

// disk opens a backend for d and makes its virtio-blk device.
func (m *Machine) disk(d Disk, cpus int, errs func(error)) (*blk.Device, error) {
	if d.File == nil {
		return nil, fmt.Errorf("no file")
	}
	queues := min(cpus, maxDiskQueues)
	if d.Direct {
		if err := setDirect(d.File); err != nil {
			return nil, err
		}
	}
	opts := block.Options{ReadOnly: d.ReadOnly, Depth: queues * blk.DefaultQueueSize}
	var im *qcow2.Image
	if d.Qcow2 {
		var err error
		if im, err = openQcow2(d); err != nil {
			return nil, err
		}
		// The file grows as the image allocates; the image bounds
		// the offsets it sends.
		opts.Size = qcow2.HostLimit
		opts.ReadOnly = im.ReadOnly()
	}
	var b block.Backend
	var err error
	switch d.IO {
	case IOAuto:
		b, err = block.Open(d.File, opts)
	case IOUring:
		b, err = block.NewUring(d.File, opts)
	case IOPool:
		b, err = block.NewPool(d.File, opts)
	default:
		err = fmt.Errorf("unknown I/O backend %q (want %q or %q)", d.IO, IOUring, IOPool)
	}
	if err != nil {
		return nil, err
	}
	if im != nil {
		if b, err = qcow2.NewBackend(im, b, opts.Depth); err != nil {
			return nil, err
		}
	}
	m.backends = append(m.backends, b)
	var lim *ratelimit.Limiter
	if d.IOPS > 0 || d.Bandwidth > 0 {
		// One second's worth in each bucket: the rate holds over any
		// second, and a guest idle for a second may spend it at once.
		lim = ratelimit.New(
			ratelimit.BucketConfig{Size: d.IOPS, RefillTime: time.Second},
			ratelimit.BucketConfig{Size: d.Bandwidth, RefillTime: time.Second}, nil)
	}
	hold := d.Poll
	switch {
	case hold == 0 && cpuid.HostIsVirtual():
		hold = DefaultDiskPoll
	case hold <= 0:
		hold = 0
	}
	return blk.New(blk.Options{Backend: b, ReadOnly: d.ReadOnly, ID: d.ID, Queues: queues, Limiter: lim, Errors: errs, Holdoff: hold})
}

// DiskReader returns disk d's content as the guest will see it, read-only,
// and its size: the file or block device, or its qcow2 image read through
// its backing chain. The VMM reads a disk before the guest runs to boot
// what the disk's boot loader configuration names.
func DiskReader(d Disk) (io.ReaderAt, int64, error) {
	if d.File == nil {
		return nil, 0, fmt.Errorf("no file")
	}
	if d.Qcow2 {
		ro := d
		ro.ReadOnly = true
		im, err := openQcow2(ro)
		if err != nil {
			return nil, 0, err
		}
		return im, im.Size(), nil
	}
	size, err := block.SizeOf(d.File)
	if err != nil {
		return nil, 0, err
	}
	return d.File, size, nil
}

// openQcow2 opens d's image and its backing chain, from the descriptors
// the caller passed in chain order: the jailed VMM opens no path.
func openQcow2(d Disk) (*qcow2.Image, error) {
	next := 0
	var open func(f *os.File, readOnly bool) (*qcow2.Image, error)
	backing := func(name, format string) (qcow2.Backing, error) {
		if next >= len(d.Backing) {
			return nil, fmt.Errorf("no descriptor was passed for it")
		}
		b := d.Backing[next]
		next++
		if b.Qcow2 {
			return open(b.File, true)
		}
		return qcow2.NewRawBacking(b.File)
	}
	open = func(f *os.File, readOnly bool) (*qcow2.Image, error) {
		return qcow2.Open(f, qcow2.Options{ReadOnly: readOnly, Backing: backing})
	}
	im, err := open(d.File, d.ReadOnly)
	if err != nil {
		return nil, err
	}
	if next != len(d.Backing) {
		return nil, fmt.Errorf("qcow2: %d backing files passed, the chain has %d", len(d.Backing), next)
	}
	return im, nil
}

// BetweenLines runs note (which writes the VMM's own lines) where the
// guest's console output stands between two lines, waiting up to wait for
// a line the guest has begun to end (serial.Buffer.BetweenLines).
func (m *Machine) BetweenLines(wait time.Duration, note func()) {
	m.console.BetweenLines(wait, note)
}

// DiskStats returns each disk's request counters, in the order of
// Config.Disks.
func (m *Machine) DiskStats() []blk.Stats {
	out := make([]blk.Stats, len(m.disks))
	for i, d := range m.disks {
		out[i] = d.Stats()
	}
	return out
}

// setDirect turns O_DIRECT on for f's open file description (the
// supervisor opened it; the VMM may not reopen paths once jailed).
func setDirect(f *os.File) error {
	fd := int(f.Fd())
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("direct: F_GETFL: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_DIRECT); err != nil {
		if errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("direct: the file system does not support O_DIRECT (tmpfs before Linux 6.6 does not): %w", err)
		}
		return fmt.Errorf("direct: F_SETFL O_DIRECT: %w", err)
	}
	return nil
}

// DiskBackends says which block backend serves each disk, for logs
// ("io_uring", or "pool (io_uring unavailable: ...)").
func (m *Machine) DiskBackends() []string {
	kinds := make([]string, len(m.backends))
	for i, b := range m.backends {
		kinds[i] = b.Kind()
	}
	return kinds
}

// closeVirtio stops the virtio devices and releases their eventfds.
func (m *Machine) closeVirtio() error {
	m.mu.Lock() // against a Dump's describeDevices
	transports := m.virtio
	m.virtio, m.vnames = nil, nil
	m.mu.Unlock()
	var errs []error
	for _, t := range transports {
		errs = append(errs, t.Close())
	}
	// Only now that every device has been reset, and so waited for its
	// requests in flight, may the backends go.
	for _, b := range m.backends {
		errs = append(errs, b.Close())
	}
	for _, n := range m.nics {
		errs = append(errs, n.Close())
	}
	for _, r := range m.routers {
		errs = append(errs, r.close())
	}
	m.routers, m.backends, m.nics = nil, nil, nil
	return errors.Join(errs...)
}

// hvcConsole reports whether a kernel command line makes hvc0 a console
// (console=hvc0, with or without options).
func hvcConsole(cmdline string) bool {
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, "console="); ok {
			if name, _, _ := strings.Cut(v, ","); name == "hvc0" {
				return true
			}
		}
	}
	return false
}
