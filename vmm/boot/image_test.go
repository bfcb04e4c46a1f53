package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/hyperroot/hyperroot/vmm/layout"
)

// Values of the synthetic bzImage, shaped like Debian's 6.1 kernel but tiny.
const (
	synthSetupSects  = 1
	synthCodeLen     = 4096
	synthInitSize    = 4 * mib
	synthPrefAddress = 16 * mib
	synthAlign       = 2 * mib
	synthCmdlineSize = 0x7FF
	synthRelease     = "6.1.0-synthetic (test@hyperroot) #1 SMP"
	// synthEnd is where the synthetic kernel's footprint ends: it
	// decompresses at pref_address (16 MiB) and uses init_size from there.
	synthEnd = synthPrefAddress + synthInitSize
)

// synthImage builds a minimal bzImage that ParseBzImage accepts: one setup
// sector after the boot sector and synthCodeLen bytes of "protected-mode
// code". edit, if not nil, changes the image before it is returned.
func synthImage(edit func(img []byte)) []byte {
	return synthImageSized(synthSetupSects, synthCodeLen, edit)
}

func synthImageSized(setupSects byte, codeLen int, edit func(img []byte)) []byte {
	sects := int(setupSects)
	if sects == 0 {
		sects = 4
	}
	setupLen := (sects + 1) * 512
	img := make([]byte, setupLen+codeLen)
	le := binary.LittleEndian
	img[0x1EF] = 0xFF // sentinel, as in real images; the loader must not copy it
	img[offSetupSects] = setupSects
	le.PutUint32(img[offSyssize:], uint32(codeLen/16))
	le.PutUint16(img[offBootFlag:], 0xAA55)
	img[offJump], img[offJump+1] = 0xEB, 0x6A // header ends at 0x26C
	copy(img[offHeaderMagic:], "HdrS")
	le.PutUint16(img[offVersion:], 0x020F)
	le.PutUint16(img[offKernelVersion:], 0x300-0x200)
	copy(img[0x300:], synthRelease+"\x00")
	img[offLoadFlags] = loadedHigh
	le.PutUint32(img[offInitrdAddrMax:], 0x7FFFFFFF)
	le.PutUint32(img[offKernelAlignment:], synthAlign)
	img[offRelocatable] = 1
	le.PutUint16(img[offXLoadFlags:], xlfKernel64|0x2)
	le.PutUint32(img[offCmdlineSize:], synthCmdlineSize)
	le.PutUint32(img[offPayloadOffset:], uint32(codeLen/16))
	le.PutUint32(img[offPayloadLength:], uint32(codeLen/2))
	le.PutUint64(img[offPrefAddress:], synthPrefAddress)
	le.PutUint32(img[offInitSize:], synthInitSize)
	for i := setupLen; i < len(img); i++ {
		img[i] = byte(i * 7)
	}
	if edit != nil {
		edit(img)
	}
	return img
}

// fakeMem is guest memory for tests: bounds from layout.RAMRanges, backing
// allocated per Slice call so a 5 GiB guest costs only what is written.
// Slices that partly overlap an earlier one fail, which catches a loader
// that places two things on top of each other.
type fakeMem struct {
	ram     [][2]uint64
	regions []fakeRegion
}

type fakeRegion struct {
	gpa uint64
	buf []byte
}

func newFakeMem(size uint64) *fakeMem { return &fakeMem{ram: layout.RAMRanges(size)} }

func (m *fakeMem) Slice(gpa, n uint64) ([]byte, error) {
	end := gpa + n
	if end < gpa {
		return nil, fmt.Errorf("fake memory: [0x%X, +0x%X) wraps", gpa, n)
	}
	inRAM := false
	for _, r := range m.ram {
		inRAM = inRAM || (gpa >= r[0] && end <= r[1])
	}
	if !inRAM {
		return nil, fmt.Errorf("fake memory: [0x%X, 0x%X) is not RAM", gpa, end)
	}
	for _, r := range m.regions {
		rend := r.gpa + uint64(len(r.buf))
		if gpa >= r.gpa && end <= rend {
			return r.buf[gpa-r.gpa : end-r.gpa], nil
		}
		if gpa < rend && end > r.gpa {
			return nil, fmt.Errorf("fake memory: [0x%X, 0x%X) partly overlaps [0x%X, 0x%X)", gpa, end, r.gpa, rend)
		}
	}
	buf := make([]byte, n)
	m.regions = append(m.regions, fakeRegion{gpa, buf})
	return buf, nil
}

// read is Slice for tests that know the region exists.
func (m *fakeMem) read(gpa, n uint64) []byte {
	b, err := m.Slice(gpa, n)
	if err != nil {
		panic(err) // test helper: a test bug, not an input
	}
	return b
}
