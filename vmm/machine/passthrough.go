package machine

import (
	"fmt"
	"os"

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
// guest physical addresses, reset, and given MSI-X (or MSI) routing of
// its own.
//
// vfio can also map the device's BAR pages into the guest (PCIOptions.Slots)
// and connect its INTx (PCIOptions.INTx); the machine gives neither yet:
// with both, TestPassthrough's TCG appliance locked up (RCU stalls on a CPU
// that took no ticks) or triple-faulted, under load, in 2 CI runs of 2,
// and which of the two is to blame is not known (docs/TESTING.md).
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
		p, err := vfio.NewPCI(dev, d.PCI, vfio.PCIOptions{Router: router, EventFD: router.EventFD, Errors: m.errlog.report})
		if err != nil {
			return err
		}
		router.max = p.Vectors()
		if n := dev.MSIXVectors(); !p.MSI() && n < p.Vectors() {
			return fmt.Errorf("vfio: %s: its MSI-X capability has %d vectors, VFIO routes %d", d.PCI, p.Vectors(), n)
		}
		slot, err := m.pci.Add(p)
		if err != nil {
			return fmt.Errorf("vfio: %s: %w", d.PCI, err)
		}
		var bars string
		for _, b := range p.BARs() {
			bars += fmt.Sprintf(" BAR%d=%dK", b.Index, b.Size>>10)
		}
		msi := "MSI-X"
		if p.MSI() {
			msi = "MSI"
		}
		fmt.Fprintf(os.Stderr, "hyperroot vmm: device %s (%s) passed through: slot %d,%s, %s %d vectors, reset=%v\n",
			d.PCI, p.ID(), slot, bars, msi, p.Vectors(), dev.Resettable())
	}
	return nil
}

// closeVFIO resets and closes the passed-through devices: before the
// interrupt routers, whose eventfds they signal.
func (m *Machine) closeVFIO() error {
	var err error
	for _, d := range m.vfio {
		if cerr := d.Close(); err == nil {
			err = cerr
		}
	}
	m.vfio = nil
	return err
}
