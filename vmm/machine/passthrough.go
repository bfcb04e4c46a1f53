package machine

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/vmm/kvm"
	"github.com/hyperroot/hyperroot/vmm/pci"
	"github.com/hyperroot/hyperroot/vmm/vfio"
)

// Device is a host PCI device the guest drives itself (vmm/vfio): its
// VFIO container and IOMMU group, opened by the caller.
type Device struct {
	PCI              string // its host address, for messages and VFIO
	Container, Group *os.File
}

// passthrough puts cfg's devices on the PCI bus after the virtio devices:
// each opened through VFIO with all of guest RAM mapped for its DMA at
// guest physical addresses, reset, and given MSI-X routing of its own and,
// where it has a pin, its INTx on its slot's GSI.
func (m *Machine) passthrough(cfg Config) error {
	for _, d := range cfg.Devices {
		dev, err := vfio.Open(int(d.Container.Fd()), int(d.Group.Fd()), d.PCI)
		if err != nil {
			return err
		}
		m.vfio = append(m.vfio, dev)
		for _, r := range m.mem.Regions() {
			if err := dev.MapDMA(r.GPA, r.Host, r.Size); err != nil {
				return err
			}
		}
		if err := dev.Reset(); err != nil {
			return err
		}
		router := &msiRouter{routes: m.gsi, vm: m.vm}
		m.routers = append(m.routers, router)
		var intx *vfio.INTx
		if dev.HasINTx() {
			if intx, err = m.intxEventFDs(); err != nil {
				return fmt.Errorf("vfio: %s: INTx: %w", d.PCI, err)
			}
		}
		p, err := vfio.NewPCI(dev, d.PCI, vfio.PCIOptions{Router: router, EventFD: router.EventFD, Errors: m.errlog.report,
			Slots: &m.slots, INTx: intx})
		if err != nil {
			return err
		}
		m.vfioPCI = append(m.vfioPCI, p)
		router.max = p.Vectors()
		if n := dev.MSIXVectors(); !p.MSI() && n < p.Vectors() {
			return fmt.Errorf("vfio: %s: its MSI-X capability has %d vectors, VFIO routes %d", d.PCI, p.Vectors(), n)
		}
		slot, err := m.pci.Add(p)
		if err != nil {
			return fmt.Errorf("vfio: %s: %w", d.PCI, err)
		}
		intxNote := ""
		if p.INTx() {
			gsi := pci.INTxGSI(slot, 1)
			if err := m.vm.IRQFD(intx.Trigger, gsi, intx.Unmask, false); err != nil {
				return fmt.Errorf("vfio: %s: INTx on GSI %d: %w", d.PCI, gsi, err)
			}
			intxNote = fmt.Sprintf(", INTx GSI %d", gsi)
		}
		var bars string
		for _, b := range p.BARs() {
			bars += fmt.Sprintf(" BAR%d=%dK", b.Index, b.Size>>10)
			if n := p.Direct(b.Index); n > 0 {
				bars += fmt.Sprintf(" (%dK mapped)", n>>10)
			}
		}
		msi := fmt.Sprintf("MSI-X %d vectors", p.Vectors())
		switch {
		case p.MSI():
			msi = fmt.Sprintf("MSI %d vectors", p.Vectors())
		case p.Vectors() == 0:
			msi = "no MSI"
		}
		fmt.Fprintf(os.Stderr, "hyperroot vmm: device %s (%s) passed through: slot %d,%s, %s%s, reset=%v\n",
			d.PCI, p.ID(), slot, bars, msi, intxNote, dev.Resettable())
	}
	return nil
}

// Passthrough says whether the machine has passed-through devices, whose
// BAR pages follow their BARs as KVM memory slots while it runs (which
// its seccomp filters must allow).
func (m *Machine) Passthrough() bool { return len(m.vfio) > 0 }

// closeVFIO resets and closes the passed-through devices: before the
// interrupt routers, whose eventfds they signal.
func (m *Machine) closeVFIO() error {
	var err error
	for _, p := range m.vfioPCI {
		if cerr := p.Close(); err == nil {
			err = cerr
		}
	}
	m.vfioPCI = nil
	for _, d := range m.vfio {
		if cerr := d.Close(); err == nil {
			err = cerr
		}
	}
	m.vfio = nil
	for _, fd := range m.vfioFDs {
		unix.Close(fd)
	}
	m.vfioFDs = nil
	return err
}

// intxEventFDs makes a passed-through device's INTx eventfds, closed with
// the devices.
func (m *Machine) intxEventFDs() (*vfio.INTx, error) {
	var fds [2]int
	for i := range fds {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			return nil, err
		}
		m.vfioFDs = append(m.vfioFDs, fd)
		fds[i] = fd
	}
	return &vfio.INTx{Trigger: fds[0], Unmask: fds[1]}, nil
}

// slotNumbers hands out KVM memory slot numbers after guest RAM's, for
// passed-through devices' mapped BAR pages (vfio.Slots).
type slotNumbers struct {
	vm   *kvm.VM
	next uint32
}

func (s *slotNumbers) NewSlot() uint32 { s.next++; return s.next - 1 }

func (s *slotNumbers) SetUserMemoryRegion(slot, flags uint32, gpa, size uint64, host uintptr) error {
	return s.vm.SetUserMemoryRegion(slot, flags, gpa, size, host)
}
