package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// KVM's binary statistics (Documentation/virt/kvm/api.rst, "KVM_GET_STATS_FD",
// Linux 5.14 and later): a descriptor per VM and per vCPU whose contents
// are a header, the names and shapes of the counters, and their values,
// read with positional reads. They are what KVM itself counts as it runs a
// vCPU (exits by cause, page faults, injected interrupts, halts): a dump
// that reads them twice tells a vCPU spinning inside KVM (counts moving,
// the guest going nowhere) from one that never runs (nothing moving).

// reqGetStatsFD is KVM_GET_STATS_FD, on a VM or a vCPU.
const reqGetStatsFD = typ | 0xce

// statsHeader is struct kvm_stats_header.
type statsHeader struct {
	Flags      uint32
	NameSize   uint32
	NumDesc    uint32
	IDOffset   uint32
	DescOffset uint32
	DataOffset uint32
}

const (
	statsHeaderSize = 24
	statsDescSize   = 16 // struct kvm_stats_desc without its name

	// statsMaxDesc and statsMaxName bound what is read: a 6.x kernel has
	// ~60 vCPU counters with names of 48 bytes.
	statsMaxDesc = 4096
	statsMaxName = 256
	statsMaxData = 1 << 20 // the values, histogram buckets included
)

// Stat is one of KVM's counters: a single value, or the buckets of a
// histogram.
type Stat struct {
	Name   string
	Values []uint64
}

// Stats are the counters of one statistics descriptor, in KVM's order.
type Stats []Stat

// Get returns the first value of the counter called name, and whether
// there is one.
func (s Stats) Get(name string) (uint64, bool) {
	for _, st := range s {
		if st.Name == name && len(st.Values) > 0 {
			return st.Values[0], true
		}
	}
	return 0, false
}

// StatsFD opens the vCPU's statistics descriptor; the caller closes it.
func (v *VCPU) StatsFD() (int, error) {
	r, err := ioctl(v.fd, reqGetStatsFD, 0)
	if err != nil {
		return -1, fmt.Errorf("kvm: KVM_GET_STATS_FD on vCPU %d: %w", v.id, err)
	}
	return int(r), nil
}

// StatsFD opens the VM's statistics descriptor; the caller closes it.
func (vm *VM) StatsFD() (int, error) {
	r, err := ioctl(vm.fd, reqGetStatsFD, 0)
	if err != nil {
		return -1, fmt.Errorf("kvm: KVM_GET_STATS_FD on the VM: %w", err)
	}
	return int(r), nil
}

// ReadStats reads every counter of a statistics descriptor. It reads with
// preadv, which the VMM's seccomp filter already allows for disks.
func ReadStats(fd int) (Stats, error) {
	pread := func(b []byte, off int64) error {
		for len(b) > 0 {
			n, err := unix.Preadv(fd, [][]byte{b}, off)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			if n == 0 {
				return errors.New("short read")
			}
			b, off = b[n:], off+int64(n)
		}
		return nil
	}
	hb := make([]byte, statsHeaderSize)
	if err := pread(hb, 0); err != nil {
		return nil, fmt.Errorf("kvm: stats header: %w", err)
	}
	h := parseStatsHeader(hb)
	if h.NumDesc > statsMaxDesc || h.NameSize > statsMaxName {
		return nil, fmt.Errorf("kvm: stats header: %d counters with names of %d bytes", h.NumDesc, h.NameSize)
	}
	descs := make([]byte, int(h.NumDesc)*(statsDescSize+int(h.NameSize)))
	if err := pread(descs, int64(h.DescOffset)); err != nil {
		return nil, fmt.Errorf("kvm: stats descriptors: %w", err)
	}
	shapes, end, err := parseStatsDescs(descs, h)
	if err != nil {
		return nil, err
	}
	data := make([]byte, end)
	if err := pread(data, int64(h.DataOffset)); err != nil {
		return nil, fmt.Errorf("kvm: stats values: %w", err)
	}
	out := make(Stats, len(shapes))
	for i, sh := range shapes {
		vals := make([]uint64, sh.size)
		for k := range vals {
			vals[k] = binary.LittleEndian.Uint64(data[sh.off+8*k:])
		}
		out[i] = Stat{Name: sh.name, Values: vals}
	}
	return out, nil
}

func parseStatsHeader(b []byte) statsHeader {
	u := func(i int) uint32 { return binary.LittleEndian.Uint32(b[4*i:]) }
	return statsHeader{u(0), u(1), u(2), u(3), u(4), u(5)}
}

// statShape is where one counter's values are in the data block.
type statShape struct {
	name      string
	off, size int
}

// parseStatsDescs decodes the descriptors in descs: each counter's name
// and place in the data block, and the block's length, all bounded.
func parseStatsDescs(descs []byte, h statsHeader) ([]statShape, int, error) {
	step := statsDescSize + int(h.NameSize)
	var out []statShape
	end := 0
	for i := 0; i+step <= len(descs) && len(out) < int(h.NumDesc); i += step {
		d := descs[i : i+step]
		size := int(binary.LittleEndian.Uint16(d[6:]))
		off := int(binary.LittleEndian.Uint32(d[8:]))
		name, _, _ := strings.Cut(string(d[statsDescSize:]), "\x00")
		if size == 0 || off%8 != 0 || off+8*size > statsMaxData {
			return nil, 0, fmt.Errorf("kvm: stats counter %q: %d values at %d", name, size, off)
		}
		out = append(out, statShape{name, off, size})
		end = max(end, off+8*size)
	}
	return out, end, nil
}
