package config

import (
	"fmt"

	"go.yaml.in/yaml/v3"

	"github.com/hyperroot/hyperroot/internal/hostpci"
)

// PCI is what the appliance does with its own PCI devices before any VM
// starts.
type PCI struct {
	// SRIOV are the physical functions whose virtual functions are
	// enabled at boot, for VMs.
	SRIOV []SRIOV
}

// SRIOV enables virtual functions on one physical function.
type SRIOV struct {
	Device string // the physical function's PCI address, 0000:00:05.0
	VFs    int    // how many virtual functions
	// Namespaces, for an NVMe physical function, are the namespace IDs
	// attached to its secondary controllers: Namespaces[i] to virtual
	// function i's (0: none). NVMe virtual functions come up with no
	// queues, no interrupts and no namespace: the appliance assigns the
	// first two through the physical function and attaches these.
	Namespaces []uint32
}

// MaxDevices bounds passed-through devices per VM: each takes a slot of
// the VM's PCI bus, which has 32, and the host bridge, the rng, the
// console, MaxDisks disks and MaxNICs NICs may take 27.
const MaxDevices = 4

// MaxVFs bounds SRIOV.VFs (the PCI SR-IOV capability's TotalVFs is 16
// bits; real devices stay far below).
const MaxVFs = 256

// Device is a host PCI device a VM drives itself (VFIO passthrough):
// either a device by its address or a virtual function of an SRIOV entry.
type Device struct {
	PCI string // its address; set for a virtual function once resolved
	VF  *VFRef
}

// VFRef names virtual function Index (from 0) of the physical function PF.
type VFRef struct {
	PF    string
	Index int
}

// String names the device as the configuration did.
func (d Device) String() string {
	if d.VF != nil {
		return fmt.Sprintf("VF %d of %s", d.VF.Index, d.VF.PF)
	}
	return d.PCI
}

func (d *decoder) pciSection(n *yaml.Node) *PCI {
	p := &PCI{}
	d.mapping(n, map[string]func(*yaml.Node){
		"sriov": func(v *yaml.Node) {
			d.sequence(v, func(item *yaml.Node) { p.SRIOV = append(p.SRIOV, d.sriov(item)) })
		},
	})
	return p
}

func (d *decoder) sriov(n *yaml.Node) SRIOV {
	var s SRIOV
	d.mapping(n, map[string]func(*yaml.Node){
		"device": func(v *yaml.Node) { s.Device = d.pciAddr(v) },
		"vfs": func(v *yaml.Node) {
			var ok bool
			if s.VFs, ok = d.integer(v); ok && (s.VFs < 1 || s.VFs > MaxVFs) {
				d.errf(v, "vfs %d: want 1 to %d", s.VFs, MaxVFs)
			}
		},
		"namespaces": func(v *yaml.Node) {
			d.sequence(v, func(item *yaml.Node) {
				id, ok := d.integer(item)
				if ok && (id < 0 || id > 1<<32-2) {
					d.errf(item, "namespace %d: want an NVMe namespace ID (1 and up), or 0 for none", id)
				}
				s.Namespaces = append(s.Namespaces, uint32(id))
			})
		},
	})
	if n.Kind == yaml.MappingNode {
		if s.Device == "" {
			d.errf(n, "sriov: device is required")
		}
		if s.VFs == 0 {
			d.errf(n, "sriov %s: vfs is required", s.Device)
		}
		if len(s.Namespaces) > s.VFs {
			d.errf(n, "sriov %s: %d namespaces for %d virtual functions", s.Device, len(s.Namespaces), s.VFs)
		}
	}
	return s
}

func (d *decoder) device(n *yaml.Node) Device {
	var dev Device
	d.mapping(n, map[string]func(*yaml.Node){
		"pci": func(v *yaml.Node) { dev.PCI = d.pciAddr(v) },
		"vf": func(v *yaml.Node) {
			dev.VF = &VFRef{Index: -1}
			d.mapping(v, map[string]func(*yaml.Node){
				"pf": func(v *yaml.Node) { dev.VF.PF = d.pciAddr(v) },
				"index": func(v *yaml.Node) {
					var ok bool
					if dev.VF.Index, ok = d.integer(v); ok && (dev.VF.Index < 0 || dev.VF.Index >= MaxVFs) {
						d.errf(v, "index %d: want 0 to %d", dev.VF.Index, MaxVFs-1)
					}
				},
			})
			if v.Kind == yaml.MappingNode && (dev.VF.PF == "" || dev.VF.Index < 0) {
				d.errf(v, "vf: pf and index are required")
			}
		},
	})
	if n.Kind == yaml.MappingNode && (dev.PCI == "") == (dev.VF == nil) {
		d.errf(n, "device: want either pci: <address> or vf: {pf: <address>, index: <n>}")
	}
	return dev
}

func (d *decoder) pciAddr(v *yaml.Node) string {
	a, err := hostpci.ParseAddr(d.str(v))
	if err != nil {
		if v.Kind == yaml.ScalarNode {
			d.errf(v, "%v", err)
		}
		return ""
	}
	return a
}

// checkDevices resolves virtual functions to the PCI addresses they will
// have, which needs the physical function's SR-IOV entry here, and refuses
// a device given to two VMs (or twice to one) and a physical function
// given to a VM while its virtual functions are enabled: a VM that resets
// or reprograms the physical function takes its virtual functions with it.
// The addresses a virtual function gets are the kernel's to say (the PF's
// SR-IOV capability: offset and stride); until then a VF is known by its
// PF and index, which is what is compared.
func (d *decoder) checkDevices(doc *yaml.Node, c *Config) {
	sriov := map[string]SRIOV{}
	if c.PCI != nil {
		for _, s := range c.PCI.SRIOV {
			if _, dup := sriov[s.Device]; dup && s.Device != "" {
				d.errf(doc, "pci: sriov: %s listed twice", s.Device)
			}
			sriov[s.Device] = s
		}
	}
	owner := map[string]string{}
	for _, vm := range c.VMs {
		for _, dev := range vm.Devices {
			key := dev.PCI
			if dev.VF != nil {
				s, ok := sriov[dev.VF.PF]
				switch {
				case dev.VF.PF == "":
					continue
				case !ok:
					d.errf(doc, "vm %s: device %s: %s is not in pci: sriov, so it has no virtual functions", vm.Name, dev, dev.VF.PF)
					continue
				case dev.VF.Index >= s.VFs:
					d.errf(doc, "vm %s: device %s: %s has %d virtual functions (pci: sriov)", vm.Name, dev, dev.VF.PF, s.VFs)
					continue
				}
				key = fmt.Sprintf("%s/vf%d", dev.VF.PF, dev.VF.Index)
			} else if _, ok := sriov[dev.PCI]; ok {
				d.errf(doc, "vm %s: device %s: it is a physical function with virtual functions enabled (pci: sriov): give a VM one of those", vm.Name, dev)
				continue
			}
			if key == "" {
				continue
			}
			if prev, ok := owner[key]; ok {
				who := "vm " + prev
				if prev == vm.Name {
					who = "it already"
				}
				d.errf(doc, "vm %s: device %s: %s has it: a device is passed through to one VM", vm.Name, dev, who)
				continue
			}
			owner[key] = vm.Name
		}
	}
}
