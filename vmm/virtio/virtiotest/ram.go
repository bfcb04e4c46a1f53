// Package virtiotest is a test kit for code that serves virtio split
// virtqueues, as net/http/httptest is for HTTP handlers: fake guest RAM
// (RAM) and a Driver that plays the guest's side of a ring (it writes
// descriptors and available entries and reads used entries), so that every
// device, transport and backend test drives its rings the same way instead
// of keeping a hand-written copy.
//
// It imports nothing of hyperroot, so package virtio's own tests can use it
// without an import cycle; its Memory is virtio.Memory's one method.
//
// The ring indices are written and read with 32-bit atomics on the aligned
// word that holds them, as the device side (package virtio) does, so that
// the race detector sees the same ordering a real driver's barriers give.
package virtiotest

import (
	"errors"
	"fmt"
)

// Memory is guest RAM as a queue sees it: Slice returns a view (not a
// copy) of [gpa, gpa+n), or an error unless the range is non-empty and
// lies inside RAM. *RAM, vmm/memory's *Guest and anything that satisfies
// virtio.Memory satisfy it.
type Memory interface {
	Slice(gpa, n uint64) ([]byte, error)
}

// ErrNotRAM is wrapped by RAM.Slice's errors for ranges outside RAM.
var ErrNotRAM = errors.New("virtiotest: not guest RAM")

// GuardLen bytes of GuardByte surround every region NewRAM and NewRAMAt
// make, so a test can prove with CheckGuards that nothing wrote outside
// guest RAM (ring words are reached through unsafe pointers, which a slice
// bound would not catch).
const (
	GuardLen  = 64
	GuardByte = 0xA5
)

// Span is a range of guest-physical addresses, for NewRAMAt.
type Span struct {
	GPA, Size uint64
}

// Region is a range of guest-physical addresses backed by bytes the test
// already has (a mapped memfd, say), for WrapRAM.
type Region struct {
	GPA   uint64
	Bytes []byte
}

type region struct {
	gpa   uint64
	buf   []byte // guard, RAM, guard (no guards for WrapRAM)
	ram   []byte // the RAM part of buf
	guard int
}

// RAM is fake guest RAM: one or more regions with holes between them, like
// vmm/memory's Guest around the MMIO hole. It is safe for concurrent use
// (it never changes after it is made).
type RAM struct {
	regions []region
}

// NewRAM returns size bytes of zeroed RAM at guest-physical 0.
func NewRAM(size uint64) *RAM { return NewRAMAt(Span{0, size}) }

// NewRAMAt returns zeroed RAM in the given spans, each between guard
// bytes. Sizes should be multiples of 4 (ring words are 4-byte aligned).
func NewRAMAt(spans ...Span) *RAM {
	m := &RAM{}
	for _, s := range spans {
		buf := make([]byte, GuardLen+s.Size+GuardLen)
		for i := range buf {
			buf[i] = GuardByte
		}
		ram := buf[GuardLen : GuardLen+s.Size : GuardLen+s.Size]
		clear(ram)
		m.regions = append(m.regions, region{gpa: s.GPA, buf: buf, ram: ram, guard: GuardLen})
	}
	return m
}

// WrapRAM returns RAM over the caller's bytes, without guards. Each
// region's first byte must be 4-byte aligned in host memory.
func WrapRAM(regions ...Region) *RAM {
	m := &RAM{}
	for _, r := range regions {
		m.regions = append(m.regions, region{gpa: r.GPA, buf: r.Bytes, ram: r.Bytes})
	}
	return m
}

// Slice implements Memory.
func (m *RAM) Slice(gpa, n uint64) ([]byte, error) {
	for _, r := range m.regions {
		size := uint64(len(r.ram))
		if gpa < r.gpa || gpa-r.gpa >= size {
			continue
		}
		off := gpa - r.gpa
		if n == 0 || n > size-off {
			break
		}
		return r.ram[off : off+n : off+n], nil
	}
	return nil, fmt.Errorf("range %#x+%#x: %w", gpa, n, ErrNotRAM)
}

// Bytes is Slice for a range the test knows is RAM; it panics otherwise.
func (m *RAM) Bytes(gpa, n uint64) []byte {
	b, err := m.Slice(gpa, n)
	if err != nil {
		panic(err)
	}
	return b
}

// Size is the total size of the regions.
func (m *RAM) Size() uint64 {
	var n uint64
	for _, r := range m.regions {
		n += uint64(len(r.ram))
	}
	return n
}

// CheckGuards reports a region whose guard bytes changed.
func (m *RAM) CheckGuards() error {
	for _, r := range m.regions {
		n := len(r.buf)
		for j := 0; j < r.guard; j++ {
			if r.buf[j] != GuardByte || r.buf[n-1-j] != GuardByte {
				return fmt.Errorf("virtiotest: guard byte around region %#x overwritten", r.gpa)
			}
		}
	}
	return nil
}
