// Package config is the appliance's declarative configuration: what the
// user asked for (networks, VMs), as opposed to what is running. It
// decodes YAML strictly: an unknown key, a wrong type or a bad value is an
// error that names file:line:column, because a typo in a hypervisor's
// configuration must not silently become a default.
package config

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is one configuration file.
type Config struct {
	Networks []Network
	// Host, if set, puts the appliance's own IP stack on a network.
	Host *Host
	VMs  []VM
	// API, if set, serves the management API on the network too.
	API *API
	// HugePages are the huge pages the appliance reserves at boot, by
	// page size (Huge2M, Huge1G), for VMs with hugepages set.
	HugePages map[Size]HugePool
	// Data, if set, names the appliance's data disk (see DataDir).
	Data *Data
	// Jail is how each VMM's jail is made; its zero value (no jail: key)
	// is filled in with the defaults by Parse.
	Jail Jail
	// PCI, if set, prepares the appliance's PCI devices for passthrough
	// (SR-IOV virtual functions) at boot.
	PCI *PCI
}

// VM is one virtual machine as configured.
type VM struct {
	Name    string
	CPUs    int    // vCPUs, default 1
	Memory  Size   // guest RAM, default 256 MiB
	Kernel  string // bzImage or ELF vmlinux path inside the appliance; "" with BootDisk
	Initrd  string // optional initramfs path
	Cmdline string // kernel command line, default "console=ttyS0"
	// BootDisk boots what the first disk's boot loader configuration
	// names (its kernel, initrds and command line, with Cmdline
	// appended) instead of Kernel: `boot: disk`, or a VM without a
	// kernel. BootEntry names the entry (title, id or index); ""
	// is the configuration's default.
	BootDisk  bool
	BootEntry string
	Restart   Restart // default on-failure
	// StopTimeout is how long its guest gets to shut down once asked (a
	// stop, a removal, the appliance's power-off: its ACPI power button,
	// pressed again every few seconds) before its VMM is killed; 0 is
	// DefaultStopTimeout. See StopGrace.
	StopTimeout time.Duration
	Disks       []Disk // virtio-blk disks, in the order the guest sees them (vda, vdb, ...)
	NICs        []NIC  // virtio-net interfaces, ports of the switch (eth0, eth1, ...)
	QoS         QoS    // resource controls of the VM's cgroup
	Pin         Pin    // host CPUs of its threads; zero: anywhere
	// HugePages backs guest RAM with huge pages of this size (Huge2M or
	// Huge1G) from the appliance's reserve; 0: normal pages.
	HugePages Size
	// NUMA places its RAM on the host's NUMA nodes and gives its guest a
	// NUMA topology; zero: neither.
	NUMA NUMA
	// CloudInit, when set, is the first-boot configuration its guest's
	// cloud-init reads from a seed disk after the VM's own disks.
	CloudInit *CloudInit
	// Devices are host PCI devices passed through to the guest (VFIO),
	// in the order of its PCI slots after its virtio devices.
	Devices []Device
	// ID is the uid and gid of the VM's VMM in its jail, one per VM, from
	// Jail.IDs: filled in by Parse (and Default).
	ID int
}

// Disk is one virtio-blk disk of a VM: a raw image file or a block device
// inside the appliance, which the supervisor opens and hands to the VMM.
type Disk struct {
	Path string // path of the image file or block device; a relative one is in DataDir
	// Size is the disk's size. It is optional for an existing file; a
	// missing file is created sparse with this size. It never shrinks an
	// existing file.
	Size     Size
	ReadOnly bool
	// ID is the serial the guest reads (GET_ID, /sys/block/vdX/serial),
	// at most 20 bytes; the default is "<vm name>-<index>".
	ID     string
	Limits DiskLimits
	// Direct opens the disk with O_DIRECT: no copy of its data in the
	// appliance's page cache (the guest caches for itself), at the price
	// of every read reaching the device.
	Direct bool
	// IO is the block backend: "" (auto: io_uring where the kernel
	// allows it, else a thread pool), "io_uring" or "pool".
	IO string
	// Poll is the longest interval at which the VMM polls a queue the
	// guest keeps sending requests to, holding back its notifications
	// and interrupts meanwhile: 0 for the VMM's default, negative
	// ("off") for an interrupt per request.
	Poll time.Duration
	// Image, if set, is what a missing disk file is made from.
	Image *Image
	// Format is the file's format: "raw" or "qcow2". It is never guessed
	// from the file's content (a guest could write a qcow2 header into a
	// raw disk and name a host file as its backing file): the default is
	// qcow2 for a path ending in .qcow2 or a disk with a Base, else raw.
	Format string
	// Base, for a qcow2 disk, is the image a missing disk file is made
	// as a thin clone of: a qcow2 overlay that reads what it has not
	// written from Base, which is opened read-only and may back many
	// clones. A relative path is in DataDir.
	Base string
}

// Disk formats.
const (
	FormatRaw   = "raw"
	FormatQcow2 = "qcow2"
)

// Image is a disk image a VM's disk is made from when its file does not
// exist yet: downloaded once into DataDir/images (shared by every disk
// made from it), verified, then copied for the disk.
type Image struct {
	URL    string // http or https
	SHA256 string // the image's digest, 64 hex digits: required
}

// DiskLimits bound a disk's throughput with token buckets that hold one
// second's worth of each: a guest may burst to twice the rate for one
// second after an idle second, and never exceeds it over longer periods.
// Zero means unlimited.
type DiskLimits struct {
	IOPS      uint64 // requests per second
	Bandwidth Size   // bytes per second (binary units: 50M is 50 MiB/s)
}

// MaxDisks bounds disks per VM; each takes a PCI slot of the VM's bus.
const MaxDisks = 16

// MaxDiskPoll bounds a disk's poll interval: longer, the guest would wait
// that long for the last completions of each burst.
const MaxDiskPoll = 10 * time.Millisecond

// Restart is a VM's restart policy.
type Restart string

const (
	RestartAlways    Restart = "always"     // restart whatever the exit
	RestartOnFailure Restart = "on-failure" // restart unless the guest powered off cleanly
	RestartNever     Restart = "never"
)

// Size is a byte count written as 512M, 2G, 1T, 4096 or 64K (binary units).
type Size uint64

// ParseSize reads a Size.
func ParseSize(s string) (Size, error) {
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf("size %q: want a number with an optional K, M, G or T suffix (binary units)", s)
	}
	n, err := strconv.ParseUint(m[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	shift := map[string]uint{"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[strings.ToUpper(strings.TrimSuffix(strings.TrimSuffix(m[2], "B"), "i"))]
	if n > (^uint64(0))>>shift {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return Size(n << shift), nil
}

var sizeRE = regexp.MustCompile(`^([0-9]+)\s*([KkMmGgTt]?(?:i?B)?)$`)

func (s Size) String() string {
	for _, u := range []struct {
		shift  uint
		suffix string
	}{{40, "T"}, {30, "G"}, {20, "M"}, {10, "K"}} {
		if s != 0 && uint64(s)%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", uint64(s)>>u.shift, u.suffix)
		}
	}
	return strconv.FormatUint(uint64(s), 10)
}

// MaxVCPUs bounds cpus in the file; the VMM also checks KVM's own limit.
const MaxVCPUs = 1024

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// ValidName says whether s may name a VM or a network: what the API
// checks a name it is given against before any lookup.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// reservedNames cannot name a VM: the console prefixes the switch's lines
// with "switch| " and the hyperroot.run job's with "run| ", and "@run"
// types to the job, so a VM of either name could pass its lines off as
// theirs or take their input.
var reservedNames = map[string]bool{"switch": true, "run": true}

// Parse decodes a configuration file. file is only used in messages. All
// errors found are returned together, one per line.
func Parse(file string, data []byte) (*Config, error) {
	d := &decoder{file: file}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	c := &Config{Jail: Jail{IDs: DefaultJailIDs}}
	if len(root.Content) == 0 { // empty file: nothing configured
		return c, nil
	}
	doc := root.Content[0]
	d.mapping(doc, map[string]func(*yaml.Node){
		"networks": func(n *yaml.Node) {
			d.sequence(n, func(item *yaml.Node) { c.Networks = append(c.Networks, d.network(item)) })
		},
		"api":       func(n *yaml.Node) { c.API = d.api(n) },
		"data":      func(n *yaml.Node) { c.Data = d.data(n) },
		"host":      func(n *yaml.Node) { c.Host = d.host(n) },
		"hugepages": func(n *yaml.Node) { c.HugePages = d.hugePages(n) },
		"jail":      func(n *yaml.Node) { c.Jail = d.jail(n) },
		"pci":       func(n *yaml.Node) { c.PCI = d.pciSection(n) },
		"vms": func(n *yaml.Node) {
			d.sequence(n, func(item *yaml.Node) { c.VMs = append(c.VMs, d.vm(item)) })
		},
	})
	d.checkNetworks(doc, c)
	d.checkDevices(doc, c)
	seen := map[string]bool{}
	for i, vm := range c.VMs {
		if seen[vm.Name] {
			d.errf(doc, "vms[%d]: duplicate VM name %q", i, vm.Name)
		}
		seen[vm.Name] = true
	}
	if c.Data != nil && c.Data.Device != "" {
		for _, vm := range c.VMs {
			for _, disk := range vm.Disks {
				if onDisk(c.Data.Device, disk.Path) || onDisk(disk.Path, c.Data.Device) {
					d.errf(doc, "data: device %s is also vm %s's disk %s: the appliance's data disk is its own", c.Data.Device, vm.Name, disk.Path)
				}
			}
		}
	}
	if !assignIDs(c.VMs, c.Jail.IDs) {
		d.errf(doc, "jail: ids %s hold fewer ids than the %d VMs", c.Jail.IDs, len(c.VMs))
	}
	// Two VMs writing one disk corrupt it: a disk may be shared only when
	// every VM has it read-only.
	type use struct {
		vms      []string
		writable bool
	}
	uses := map[string]*use{}
	var paths []string
	for _, vm := range c.VMs {
		for _, disk := range vm.Disks {
			p := filepath.Clean(disk.Path) // /a//b.img is /a/b.img
			u := uses[p]
			if u == nil {
				u = &use{}
				uses[p] = u
				paths = append(paths, p)
			}
			u.vms = append(u.vms, vm.Name)
			u.writable = u.writable || !disk.ReadOnly
		}
	}
	// A base is read by every clone: no VM may write it.
	for _, vm := range c.VMs {
		for _, disk := range vm.Disks {
			if u := uses[filepath.Clean(disk.Base)]; disk.Base != "" && u != nil && u.writable {
				d.errf(doc, "disk %s: its base %s is a writable disk of vm %s: a base must stay unchanged",
					disk.Path, disk.Base, strings.Join(u.vms, ", "))
			}
		}
	}
	for _, p := range paths {
		if u := uses[p]; p != "" && len(u.vms) > 1 && u.writable {
			d.errf(doc, "disk %s: used by vms %s and writable in one of them: share a disk only read-only",
				p, strings.Join(u.vms, ", "))
		}
	}
	if len(d.errs) > 0 {
		return nil, errors.Join(d.errs...)
	}
	return c, nil
}

func (d *decoder) vm(n *yaml.Node) VM {
	// Named up front: the name key may come after the one in error.
	if name := entryName(n); nameRE.MatchString(name) {
		d.inVM = name
		defer func() { d.inVM = "" }()
	}
	vm := VM{CPUs: 1, Memory: 256 << 20, Cmdline: "console=ttyS0", Restart: RestartOnFailure}
	var hugeNode, numaNode, cloudNode *yaml.Node
	d.mapping(n, map[string]func(*yaml.Node){
		"name": func(v *yaml.Node) {
			vm.Name = d.name(v)
			if reservedNames[vm.Name] {
				d.errf(v, "name %q is reserved: the console uses it for the appliance's own output and input", vm.Name)
			}
		},
		"cpus": func(v *yaml.Node) {
			var ok bool
			if vm.CPUs, ok = d.integer(v); ok && (vm.CPUs < 1 || vm.CPUs > MaxVCPUs) {
				d.errf(v, "cpus %d: want 1 to %d", vm.CPUs, MaxVCPUs)
			}
		},
		"memory": func(v *yaml.Node) {
			s, err := ParseSize(d.str(v))
			if err != nil {
				d.errf(v, "memory: %v", err)
			} else if s < 16<<20 || s%(4<<10) != 0 {
				d.errf(v, "memory %s: want at least 16M, a multiple of 4K", s)
			}
			vm.Memory = s
		},
		"kernel": func(v *yaml.Node) { vm.Kernel = d.path(v) },
		"boot": func(v *yaml.Node) {
			if v.Kind == yaml.ScalarNode {
				if s := d.str(v); s != "disk" {
					d.errf(v, "boot %q: want disk, or {from: disk, entry: ...}", s)
				}
				vm.BootDisk = true
				return
			}
			d.mapping(v, map[string]func(*yaml.Node){
				"from": func(v *yaml.Node) {
					if s := d.str(v); s != "disk" {
						d.errf(v, "from %q: want disk", s)
					}
					vm.BootDisk = true
				},
				"entry": func(v *yaml.Node) {
					vm.BootDisk = true
					vm.BootEntry = d.str(v)
					if vm.BootEntry == "" || len(vm.BootEntry) > 256 || strings.ContainsAny(vm.BootEntry, "\x00\n") {
						d.errf(v, "entry %q: want a title, id or index of the disk's boot menu", vm.BootEntry)
					}
				},
			})
		},
		"initrd":  func(v *yaml.Node) { vm.Initrd = d.path(v) },
		"cmdline": func(v *yaml.Node) { vm.Cmdline = d.str(v) },
		"restart": func(v *yaml.Node) {
			vm.Restart = Restart(d.str(v))
			switch vm.Restart {
			case RestartAlways, RestartOnFailure, RestartNever:
			default:
				d.errf(v, "restart %q: want always, on-failure or never", vm.Restart)
			}
		},
		"nics": func(v *yaml.Node) {
			d.sequence(v, func(item *yaml.Node) { vm.NICs = append(vm.NICs, d.nic(item)) })
			if len(vm.NICs) > MaxNICs {
				d.errf(v, "nics: %d NICs, want at most %d", len(vm.NICs), MaxNICs)
			}
		},
		"devices": func(v *yaml.Node) {
			d.sequence(v, func(item *yaml.Node) { vm.Devices = append(vm.Devices, d.device(item)) })
			if len(vm.Devices) > MaxDevices {
				d.errf(v, "devices: %d devices, want at most %d", len(vm.Devices), MaxDevices)
			}
		},
		"stop_timeout": func(v *yaml.Node) {
			vm.StopTimeout = d.duration(v, "stop_timeout", time.Second, time.Hour)
		},
		"qos":        func(v *yaml.Node) { vm.QoS = d.qos(v) },
		"cloud_init": func(v *yaml.Node) { vm.CloudInit = d.cloudInit(v); cloudNode = v },
		"pin":        func(v *yaml.Node) { vm.Pin = d.pin(v) },
		"numa": func(v *yaml.Node) {
			vm.NUMA = d.numa(v)
			numaNode = v
		},
		"hugepages": func(v *yaml.Node) {
			vm.HugePages = d.hugePageSize(v)
			hugeNode = v
		},
		"disks": func(v *yaml.Node) {
			d.sequence(v, func(item *yaml.Node) { vm.Disks = append(vm.Disks, d.disk(item)) })
			if len(vm.Disks) > MaxDisks {
				d.errf(v, "disks: %d disks, want at most %d", len(vm.Disks), MaxDisks)
			}
			seen := map[string]bool{}
			for i, disk := range vm.Disks {
				if disk.Path != "" && seen[disk.Path] {
					d.errf(v.Content[i], "disk %s: listed twice", disk.Path)
				}
				seen[disk.Path] = true
			}
		},
	})
	if numaNode != nil {
		d.checkNUMA(numaNode, vm)
	}
	if vm.CloudInit != nil {
		if vm.CloudInit.Hostname == "" {
			vm.CloudInit.Hostname = vm.Name
		}
		if len(vm.Disks) >= MaxDisks {
			d.errf(cloudNode, "cloud_init: its seed disk would be disk %d, want at most %d disks", len(vm.Disks)+1, MaxDisks)
		}
	}
	if vm.HugePages != 0 && vm.Memory%vm.HugePages != 0 {
		d.errf(hugeNode, "hugepages %s: memory %s is not a multiple of the page size", vm.HugePages, vm.Memory)
	}
	for i := range vm.Disks {
		if vm.Disks[i].ID == "" {
			vm.Disks[i].ID = defaultDiskID(vm.Name, i)
		}
	}
	for i := range vm.NICs {
		if vm.NICs[i].MAC == nil {
			vm.NICs[i].MAC = DefaultMAC(vm.Name, i)
		}
	}
	if n.Kind == yaml.MappingNode {
		if vm.Name == "" {
			d.errf(n, "vm: name is required")
		}
		switch {
		case vm.Kernel != "" && vm.BootDisk:
			d.errf(n, "give kernel or boot: disk, not both")
		case vm.Kernel == "" && len(vm.Disks) == 0:
			d.errf(n, "kernel is required (or a disk to boot from)")
		case vm.Kernel == "":
			vm.BootDisk = true // no kernel: boot the first disk
		}
		if vm.BootDisk && vm.Initrd != "" {
			d.errf(n, "initrd comes from the disk with boot: disk")
		}
	}
	return vm
}

// disk decodes one entry of a VM's disks.
func (d *decoder) disk(n *yaml.Node) Disk {
	var disk Disk
	d.mapping(n, map[string]func(*yaml.Node){
		"path": func(v *yaml.Node) { disk.Path = d.diskPath(v) },
		"size": func(v *yaml.Node) {
			s, err := ParseSize(d.str(v))
			switch {
			case err != nil:
				d.errf(v, "size: %v", err)
			case s == 0 || s%512 != 0:
				d.errf(v, "size %s: want a non-zero multiple of 512 bytes", s)
			}
			disk.Size = s
		},
		"readonly": func(v *yaml.Node) { disk.ReadOnly = d.boolean(v) },
		"image":    func(v *yaml.Node) { disk.Image = d.image(v) },
		"format": func(v *yaml.Node) {
			switch s := d.str(v); s {
			case FormatRaw, FormatQcow2:
				disk.Format = s
			default:
				d.errf(v, "format %q: want raw or qcow2", s)
			}
		},
		"base":   func(v *yaml.Node) { disk.Base = d.diskPath(v) },
		"direct": func(v *yaml.Node) { disk.Direct = d.boolean(v) },
		"poll": func(v *yaml.Node) {
			if d.str(v) == "off" {
				disk.Poll = -1
				return
			}
			disk.Poll = d.duration(v, "poll", time.Microsecond, MaxDiskPoll)
		},
		"io": func(v *yaml.Node) {
			switch s := d.str(v); s {
			case "auto":
			case "io_uring", "pool":
				disk.IO = s
			default:
				d.errf(v, "io %q: want auto, io_uring or pool", s)
			}
		},
		"id": func(v *yaml.Node) {
			disk.ID = d.str(v)
			if !diskIDRE.MatchString(disk.ID) {
				d.errf(v, "id %q: want 1-20 letters, digits, dots, dashes, underscores or colons", disk.ID)
			}
		},
		"limits": func(v *yaml.Node) {
			d.mapping(v, map[string]func(*yaml.Node){
				"iops": func(v *yaml.Node) {
					if n, ok := d.integer(v); ok && n < 1 {
						d.errf(v, "iops %d: want a positive number (leave it out for no limit)", n)
					} else if ok {
						disk.Limits.IOPS = uint64(n)
					}
				},
				"bandwidth": func(v *yaml.Node) {
					s, err := ParseSize(d.str(v))
					switch {
					case err != nil:
						d.errf(v, "bandwidth: %v", err)
					case s < 4<<10:
						d.errf(v, "bandwidth %s: want at least 4K (bytes per second; leave it out for no limit)", s)
					}
					disk.Limits.Bandwidth = s
				},
			})
		},
	})
	if n.Kind == yaml.MappingNode && disk.Path == "" {
		d.errf(n, "disk: path is required")
	}
	if disk.Format == "" {
		disk.Format = FormatRaw
		if strings.HasSuffix(disk.Path, ".qcow2") || disk.Base != "" {
			disk.Format = FormatQcow2
		}
	}
	if disk.Format == FormatQcow2 {
		switch {
		case disk.Base != "" && disk.Image != nil:
			d.errf(n, "disk %s: give base or image, not both", disk.Path)
		case disk.Base != "" && disk.ReadOnly:
			d.errf(n, "disk %s: a clone of base is made to be written: leave readonly out", disk.Path)
		case disk.Direct:
			d.errf(n, "disk %s: direct is not supported for qcow2 disks yet", disk.Path)
		}
	} else if disk.Base != "" {
		d.errf(n, "disk %s: base needs format qcow2", disk.Path)
	}
	return disk
}

// diskIDRE is what a disk serial may be: short, printable and free of the
// characters `hyperroot vmm --disk` uses as separators.
var diskIDRE = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,20}$`)

// defaultDiskID is "<vm>-<index>", the VM name shortened so that the
// serial fits GET_ID's 20 bytes and keeps the index.
func defaultDiskID(vm string, i int) string {
	suffix := fmt.Sprintf("-%d", i)
	if len(vm)+len(suffix) > 20 {
		vm = vm[:20-len(suffix)]
	}
	return vm + suffix
}

// decoder walks yaml.Nodes, collecting positioned errors.
type decoder struct {
	file string
	errs []error
	// inVM names the VM whose entry is being decoded, for its errors: in
	// a configuration of many VMs, "vm web: ..." says whose entry to fix
	// before the line number does.
	inVM string
}

func (d *decoder) errf(n *yaml.Node, format string, args ...any) {
	where := fmt.Sprintf("%s:%d:%d: ", d.file, n.Line, n.Column)
	if d.inVM != "" {
		where += "vm " + d.inVM + ": "
	}
	d.errs = append(d.errs, fmt.Errorf("%s%s", where, fmt.Sprintf(format, args...)))
}

// entryName is the scalar value of key name in mapping n, or "".
func entryName(n *yaml.Node) string {
	if n.Kind != yaml.MappingNode {
		return ""
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k, v := n.Content[i], n.Content[i+1]; k.Value == "name" && v.Kind == yaml.ScalarNode {
			return v.Value
		}
	}
	return ""
}

func (d *decoder) mapping(n *yaml.Node, fields map[string]func(*yaml.Node)) {
	if n.Kind != yaml.MappingNode {
		d.errf(n, "want a mapping (key: value), found %s", kind(n))
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		f, ok := fields[k.Value]
		switch {
		case !ok:
			d.errf(k, "unknown key %q (known: %s)", k.Value, keys(fields))
		case seen[k.Value]:
			d.errf(k, "key %q given twice", k.Value)
		default:
			seen[k.Value] = true
			f(v)
		}
	}
}

func (d *decoder) sequence(n *yaml.Node, item func(*yaml.Node)) {
	if n.Kind != yaml.SequenceNode {
		d.errf(n, "want a list, found %s", kind(n))
		return
	}
	for _, c := range n.Content {
		item(c)
	}
}

// name decodes the name of a VM, a network or a token: the rule of
// ValidName, checked (an empty name is the caller's to report).
func (d *decoder) name(n *yaml.Node) string {
	s := d.str(n)
	if s != "" && !nameRE.MatchString(s) {
		d.errf(n, "name %q: want 1-32 lower-case letters, digits and dashes", s)
	}
	return s
}

func (d *decoder) str(n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode {
		d.errf(n, "want a value, found %s", kind(n))
		return ""
	}
	return n.Value
}

func (d *decoder) integer(n *yaml.Node) (int, bool) {
	v, err := strconv.Atoi(d.str(n))
	if err != nil && n.Kind == yaml.ScalarNode {
		d.errf(n, "want a whole number, found %q", n.Value)
	}
	return v, err == nil
}

// duration is a Go duration ("30s", "1m30s") from least to most, or 0
// after an error.
func (d *decoder) duration(n *yaml.Node, key string, least, most time.Duration) time.Duration {
	v, err := time.ParseDuration(d.str(n))
	switch {
	case err != nil && n.Kind == yaml.ScalarNode:
		d.errf(n, "%s %q: want a duration such as %s", key, n.Value, least)
	case err != nil:
	case v < least || v > most:
		d.errf(n, "%s %s: want %s to %s", key, v, least, most)
	default:
		return v
	}
	return 0
}

func (d *decoder) boolean(n *yaml.Node) bool {
	switch v := d.str(n); v {
	case "true":
		return true
	case "false":
		return false
	default:
		if n.Kind == yaml.ScalarNode {
			d.errf(n, "want true or false, found %q", v)
		}
		return false
	}
}

func (d *decoder) path(n *yaml.Node) string {
	p := d.str(n)
	if p != "" && !strings.HasPrefix(p, "/") {
		d.errf(n, "path %q: want an absolute path inside the appliance", p)
	}
	return p
}

func kind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	return fmt.Sprintf("%q", n.Value)
}

func keys(m map[string]func(*yaml.Node)) string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

// Default is the configuration of an appliance that was given none: two
// small demo VMs booting the test guest the image carries under /guest.
func Default() *Config {
	demo := func(name string, cpus int, mem Size) VM {
		return VM{Name: name, CPUs: cpus, Memory: mem, Kernel: "/guest/vmlinux", Initrd: "/guest/initramfs.cpio",
			Cmdline: "console=ttyS0 quiet panic=-1", Restart: RestartNever}
	}
	c := &Config{VMs: []VM{demo("demo1", 1, 128<<20), demo("demo2", 2, 256<<20)}, Jail: Jail{IDs: DefaultJailIDs}}
	assignIDs(c.VMs, c.Jail.IDs)
	return c
}

// DefaultStopTimeout is a VM's StopTimeout unless configured: a small
// guest powers off in seconds, but one still booting takes the power
// button only once its init listens (under TCG, over 10 s after its
// start while its neighbours boot).
const DefaultStopTimeout = 30 * time.Second

// StopGrace is how long the VM's guest gets to shut down once asked
// (StopTimeout, or its default).
func (vm VM) StopGrace() time.Duration {
	if vm.StopTimeout == 0 {
		return DefaultStopTimeout
	}
	return vm.StopTimeout
}

// onDisk says whether the device path dev is disk or, by its name, one of
// its partitions (vda1 of vda, nvme0n1p2 of nvme0n1).
func onDisk(dev, disk string) bool {
	rest, ok := strings.CutPrefix(dev, disk)
	if !ok || !strings.HasPrefix(disk, "/dev/") {
		return false
	}
	rest = strings.TrimPrefix(rest, "p")
	if rest == "" {
		return dev == disk
	}
	for _, r := range rest {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
