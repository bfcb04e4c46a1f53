// Package boot loads a Linux kernel into guest memory, a bzImage or an ELF
// vmlinux (elf.go), and prepares the boot CPU for the kernel's 64-bit entry
// point, following the x86 boot protocol (Documentation/arch/x86/boot.rst).
package boot

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hyperroot/hyperroot/vmm/layout"
)

// Offsets of setup header fields, counted from the start of the bzImage file.
// boot_params embeds the same header at the same offsets, so these double as
// zero-page offsets.
const (
	offSetupSects      = 0x1F1
	offSyssize         = 0x1F4
	offBootFlag        = 0x1FE
	offJump            = 0x200
	offHeaderMagic     = 0x202
	offVersion         = 0x206
	offKernelVersion   = 0x20E
	offTypeOfLoader    = 0x210
	offLoadFlags       = 0x211
	offRamdiskImage    = 0x218
	offRamdiskSize     = 0x21C
	offHeapEndPtr      = 0x224
	offCmdLinePtr      = 0x228
	offInitrdAddrMax   = 0x22C
	offKernelAlignment = 0x230
	offRelocatable     = 0x234
	offXLoadFlags      = 0x236
	offCmdlineSize     = 0x238
	offPayloadOffset   = 0x248
	offPayloadLength   = 0x24C
	offSetupData       = 0x250
	offPrefAddress     = 0x258
	offInitSize        = 0x260

	// minHeaderEnd is where a protocol 2.12 header ends at the least
	// (handover_offset, 2.11, is its last field).
	minHeaderEnd = 0x268
	// maxHeaderEnd is where boot_params stops holding the setup header
	// (edd_mbr_sig_buffer starts there); longer headers are cut.
	maxHeaderEnd = 0x290
)

// Flag bits of loadflags and xloadflags.
const (
	loadedHigh = 0x01 // LOADED_HIGH: protected-mode code runs at 1 MiB
	canUseHeap = 0x80 // CAN_USE_HEAP: heap_end_ptr is valid

	xlfKernel64 = 0x01 // XLF_KERNEL_64: 64-bit entry at load address + 0x200
)

const (
	bootFlag       = 0xAA55
	headerMagic    = 0x53726448 // "HdrS" read little-endian
	minProtocol    = 0x020C     // 2.12: first with xloadflags, so XLF_KERNEL_64 can be checked
	rsdpProtocol   = 0x020E     // 2.14: boot_params.acpi_rsdp_addr is honoured
	sectorSize     = 512
	defaultInitMax = 0x37FFFFFF // initrd_addr_max of kernels that leave it 0
	loaderUnknown  = 0xFF       // type_of_loader for a loader without an assigned ID
	heapEnd        = 0xFE00     // heap_end_ptr: end of the setup heap, minus 0x200
	entry64Offset  = 0x200      // 64-bit entry point, relative to the load address
	maxPrefAddress = 1 << 32
)

// Kernel is a validated bzImage. Code aliases the image passed to
// ParseBzImage, which must not be modified while the Kernel is in use.
type Kernel struct {
	Protocol        uint16 // boot protocol version, 0x020F for 2.15
	KernelVersion   string // the kernel's release string, if the image carries one
	SetupSects      int    // 512-byte sectors of real-mode setup after the boot sector
	LoadFlags       uint8
	XLoadFlags      uint16
	Relocatable     bool
	KernelAlignment uint32 // physical alignment a relocatable kernel runs at
	PrefAddress     uint64 // where the kernel decompresses itself when not moved higher
	InitSize        uint32 // bytes the kernel needs from its run address until it reads e820
	InitrdAddrMax   uint32 // highest address the initrd may occupy (inclusive)
	CmdlineSize     uint32 // longest command line, without the NUL
	PayloadOffset   uint32 // compressed payload, relative to Code
	PayloadLength   uint32

	// Header is the setup header from offset 0x1F1, as the kernel wants it
	// copied into boot_params (for a vmlinux, the loader's own).
	Header []byte
	// Code is the protected-mode part of a bzImage, loaded at
	// layout.KernelLoad; nil for a vmlinux.
	Code []byte
	// Vmlinux says the kernel is an ELF vmlinux (ParseVmlinux): no
	// decompressor, entered at its own 64-bit entry point.
	Vmlinux bool

	entry    uint64    // guest-physical 64-bit entry point
	segments []segment // what Load writes
}

// segment is size bytes of guest RAM at addr: data, then zeros.
type segment struct {
	addr uint64
	data []byte
	size uint64
}

// Entry is the guest-physical address of the kernel's 64-bit entry point.
func (k *Kernel) Entry() uint64 { return k.entry }

// ProtocolString formats Protocol the way boot.rst writes it ("2.15").
func (k *Kernel) ProtocolString() string { return protocolString(k.Protocol) }

func protocolString(v uint16) string { return fmt.Sprintf("%d.%02d", v>>8, v&0xFF) }

// ErrNotBzImage is wrapped by the errors for files that are not a bzImage at all.
var ErrNotBzImage = errors.New("not a bzImage")

// ParseBzImage validates the setup header of a bzImage and returns what the
// loader needs from it. It never panics, whatever img holds.
func ParseBzImage(img []byte) (*Kernel, error) {
	if len(img) < offVersion+2 {
		return nil, fmt.Errorf("truncated: setup header needs %d bytes, file has %d", offVersion+2, len(img))
	}
	le := binary.LittleEndian
	if f := le.Uint16(img[offBootFlag:]); f != bootFlag {
		return nil, fmt.Errorf("%w: boot flag at 0x1FE is 0x%04X, want 0xAA55", ErrNotBzImage, f)
	}
	if le.Uint32(img[offHeaderMagic:]) != headerMagic {
		return nil, fmt.Errorf("%w: no HdrS magic at 0x202", ErrNotBzImage)
	}
	k := &Kernel{Protocol: le.Uint16(img[offVersion:])}
	if k.Protocol < minProtocol {
		return nil, fmt.Errorf("boot protocol %s too old: need %s for 64-bit entry",
			k.ProtocolString(), protocolString(minProtocol))
	}

	// The jump at 0x200 skips the header; its 8-bit displacement gives the
	// header's end.
	hdrEnd := offHeaderMagic + int(img[offJump+1])
	if hdrEnd < minHeaderEnd {
		return nil, fmt.Errorf("setup header ends at 0x%X, protocol %s needs it to reach 0x%X",
			hdrEnd, k.ProtocolString(), minHeaderEnd)
	}
	hdrEnd = min(hdrEnd, maxHeaderEnd)

	k.SetupSects = int(img[offSetupSects])
	if k.SetupSects == 0 {
		k.SetupSects = 4 // boot.rst: 0 means 4
	}
	setupSize := (k.SetupSects + 1) * sectorSize
	if len(img) <= setupSize {
		return nil, fmt.Errorf("truncated: setup needs %d bytes and protected-mode code follows it, file has %d",
			setupSize, len(img))
	}
	k.Code = img[setupSize:]
	k.Header = img[offSetupSects:hdrEnd]

	sys := uint64(le.Uint32(img[offSyssize:])) * 16 // code proper; a signature may follow
	if sys > uint64(len(k.Code)) {
		return nil, fmt.Errorf("truncated: protected-mode code is %d bytes (syssize), file has %d after the setup",
			sys, len(k.Code))
	}

	k.LoadFlags = img[offLoadFlags]
	k.XLoadFlags = le.Uint16(img[offXLoadFlags:])
	k.Relocatable = img[offRelocatable] != 0
	k.KernelAlignment = le.Uint32(img[offKernelAlignment:])
	k.PrefAddress = le.Uint64(img[offPrefAddress:])
	k.InitSize = le.Uint32(img[offInitSize:])
	k.InitrdAddrMax = le.Uint32(img[offInitrdAddrMax:])
	k.CmdlineSize = le.Uint32(img[offCmdlineSize:])
	k.PayloadOffset = le.Uint32(img[offPayloadOffset:])
	k.PayloadLength = le.Uint32(img[offPayloadLength:])
	if k.InitrdAddrMax == 0 {
		k.InitrdAddrMax = defaultInitMax
	}

	if k.XLoadFlags&xlfKernel64 == 0 {
		return nil, fmt.Errorf("no 64-bit entry point: XLF_KERNEL_64 not set in xloadflags 0x%X", k.XLoadFlags)
	}
	if k.LoadFlags&loadedHigh == 0 {
		return nil, fmt.Errorf("%w: LOADED_HIGH not set in loadflags 0x%02X (a zImage, which loads at 64 KiB)",
			ErrNotBzImage, k.LoadFlags)
	}
	if a := k.KernelAlignment; k.Relocatable && (a == 0 || a&(a-1) != 0) {
		return nil, fmt.Errorf("kernel_alignment 0x%X is not a power of two", a)
	}
	if k.PrefAddress >= maxPrefAddress {
		return nil, fmt.Errorf("pref_address 0x%X is above 4 GiB: this loader runs kernels below 4 GiB", k.PrefAddress)
	}
	if k.InitSize == 0 || uint64(k.InitSize) < sys {
		return nil, fmt.Errorf("init_size 0x%X is smaller than the protected-mode code (0x%X bytes)", k.InitSize, sys)
	}
	if end := uint64(k.PayloadOffset) + uint64(k.PayloadLength); k.PayloadLength == 0 || end > uint64(len(k.Code)) {
		return nil, fmt.Errorf("compressed payload [0x%X, 0x%X) lies outside the %d bytes of protected-mode code",
			k.PayloadOffset, end, len(k.Code))
	}
	k.KernelVersion = kernelVersion(img, setupSize)
	k.entry = layout.KernelLoad + entry64Offset
	k.segments = []segment{{addr: layout.KernelLoad, data: k.Code, size: uint64(len(k.Code))}}
	return k, nil
}

// kernelVersion returns the NUL-terminated release string that kernel_version
// points to (an offset from 0x200 inside the setup), or "" when there is none.
func kernelVersion(img []byte, setupSize int) string {
	p := int(binary.LittleEndian.Uint16(img[offKernelVersion:]))
	if p == 0 {
		return ""
	}
	start := p + entry64Offset
	if start >= setupSize {
		return ""
	}
	s := img[start:min(setupSize, start+256)]
	for i, c := range s {
		if c == 0 {
			return string(s[:i])
		}
		if c < 0x20 || c > 0x7E {
			return ""
		}
	}
	return ""
}

// runAddress is where the kernel decompresses itself. A relocatable kernel
// entered at KernelLoad rounds that up to kernel_alignment and, when the
// result is below pref_address (its LOAD_PHYSICAL_ADDR, 16 MiB for Debian),
// moves up to pref_address; a fixed kernel always runs at pref_address. Its
// compressed copy and decompression buffers live in the init_size bytes from
// there, so the loader must keep that range free as well.
func (k *Kernel) runAddress() uint64 {
	if !k.Relocatable {
		return k.PrefAddress
	}
	a := uint64(k.KernelAlignment)
	run := (layout.KernelLoad + a - 1) &^ (a - 1)
	return max(run, k.PrefAddress)
}

// End is the first guest-physical address above everything the kernel uses
// before it has read the e820 map: the loaded segments and, for a bzImage,
// the init_size bytes at KernelLoad and at its run address. The initrd is
// placed above it.
func (k *Kernel) End() uint64 {
	var end uint64
	for _, s := range k.segments {
		end = max(end, s.addr+s.size)
	}
	if k.Vmlinux {
		return end
	}
	return max(end,
		layout.KernelLoad+uint64(k.InitSize),
		k.runAddress()+uint64(k.InitSize),
	)
}
