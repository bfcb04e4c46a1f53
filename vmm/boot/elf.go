package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hyperroot/hyperroot/vmm/layout"
)

// A vmlinux is the kernel proper as the kernel build links it: an ELF
// executable whose loadable segments name the physical addresses they run
// at, and whose entry point (phys_startup_64) is the same 64-bit entry a
// bzImage's decompressor jumps to once it has unpacked that ELF. Booting
// it skips the decompressor: the guest's first instruction is the
// kernel's own, which under nested emulation saves the seconds the
// decompressor spends unpacking ~50 MB (image.UnpackVmlinux does that
// once, when the appliance image is built). Firecracker and Cloud
// Hypervisor boot the same way. What is lost is what only the
// decompressor does: KASLR (the kernel runs where it was linked).

// ELF constants (the System V ABI and its x86-64 supplement).
const (
	elfClass64   = 2
	elfData2LSB  = 1
	elfVersion1  = 1
	elfTypeExec  = 2
	elfMachineX8 = 62 // EM_X86_64
	elfHeaderLen = 64
	elfPhdrLen   = 56
	ptLoad       = 1
	pfExec       = 1

	// maxSegments bounds the program headers a vmlinux may have (Linux's
	// has 5: four PT_LOAD and a PT_NOTE).
	maxSegments = 64
)

var elfMagic = []byte("\x7fELF")

// The setup header a vmlinux lacks, which the loader writes into
// boot_params in its place. The kernel proper reads the loader's fields
// (command line, initrd, type_of_loader) and a non-zero version (its sign
// that boot_params was filled in); the rest is what Debian's bzImage says,
// for tools in the guest that read boot_params.
const (
	vmlinuxProtocol     = 0x020F // 2.15
	vmlinuxCmdlineSize  = 2047   // COMMAND_LINE_SIZE - 1 on x86
	vmlinuxInitrdMax    = 0x7FFFFFFF
	vmlinuxKernelAlign  = 0x200000
	vmlinuxHeaderLength = minHeaderEnd - offSetupSects
)

// IsVmlinux reports whether img starts like an ELF file: ParseKernel's
// choice between ParseVmlinux and ParseBzImage.
func IsVmlinux(img []byte) bool { return bytes.HasPrefix(img, elfMagic) }

// ParseKernel validates a kernel image, a vmlinux (ELF) or a bzImage, and
// returns what the loader needs from it. It never panics, whatever img
// holds.
func ParseKernel(img []byte) (*Kernel, error) {
	if IsVmlinux(img) {
		return ParseVmlinux(img)
	}
	k, err := ParseBzImage(img)
	if errors.Is(err, ErrNotBzImage) {
		return nil, fmt.Errorf("%w (nor an ELF vmlinux)", err)
	}
	return k, err
}

// ParseVmlinux validates an x86-64 ELF vmlinux and returns what the loader
// needs from it: its PT_LOAD segments, placed at their physical addresses,
// and its entry point, which must lie in an executable one. Segments must
// lie above the boot structures (layout.KernelLoad), below 4 GiB, and
// apart. It never panics, whatever img holds; the Kernel's segments alias
// img.
func ParseVmlinux(img []byte) (*Kernel, error) {
	le := binary.LittleEndian
	if len(img) < elfHeaderLen {
		return nil, fmt.Errorf("vmlinux: truncated: the ELF header needs %d bytes, file has %d", elfHeaderLen, len(img))
	}
	if !IsVmlinux(img) {
		return nil, errors.New("vmlinux: no ELF magic")
	}
	if img[4] != elfClass64 || img[5] != elfData2LSB || img[6] != elfVersion1 {
		return nil, fmt.Errorf("vmlinux: ELF class %d, data %d, version %d: want a 64-bit little-endian ELF (2, 1, 1)", img[4], img[5], img[6])
	}
	if v := le.Uint32(img[20:]); v != elfVersion1 {
		return nil, fmt.Errorf("vmlinux: ELF version %d, want 1", v)
	}
	if t, m := le.Uint16(img[16:]), le.Uint16(img[18:]); t != elfTypeExec || m != elfMachineX8 {
		return nil, fmt.Errorf("vmlinux: ELF type %d, machine %d: want an x86-64 executable (2, 62)", t, m)
	}
	entry := le.Uint64(img[24:])
	phoff := le.Uint64(img[32:])
	phentsize, phnum := le.Uint16(img[54:]), le.Uint16(img[56:])
	if phentsize != elfPhdrLen {
		return nil, fmt.Errorf("vmlinux: program header size %d, want %d", phentsize, elfPhdrLen)
	}
	if phnum == 0 || phnum > maxSegments {
		return nil, fmt.Errorf("vmlinux: %d program headers, want 1 to %d", phnum, maxSegments)
	}
	if phoff > uint64(len(img)) || uint64(phnum)*elfPhdrLen > uint64(len(img))-phoff {
		return nil, fmt.Errorf("vmlinux: truncated: %d program headers at 0x%X, file has %d bytes", phnum, phoff, len(img))
	}

	k := &Kernel{Protocol: vmlinuxProtocol, CmdlineSize: vmlinuxCmdlineSize, InitrdAddrMax: vmlinuxInitrdMax,
		LoadFlags: loadedHigh, XLoadFlags: xlfKernel64, KernelAlignment: vmlinuxKernelAlign, Vmlinux: true}
	entryOK := false
	for i := range uint64(phnum) {
		ph := img[phoff+i*elfPhdrLen:][:elfPhdrLen]
		flags := le.Uint32(ph[4:])
		off, paddr := le.Uint64(ph[8:]), le.Uint64(ph[24:])
		filesz, memsz := le.Uint64(ph[32:]), le.Uint64(ph[40:])
		if off > uint64(len(img)) || filesz > uint64(len(img))-off { // any segment, loaded or not
			return nil, fmt.Errorf("vmlinux: segment %d: file bytes [0x%X, +0x%X) beyond the file's %d", i, off, filesz, len(img))
		}
		if le.Uint32(ph[0:]) != ptLoad {
			continue
		}
		switch {
		case filesz > memsz:
			return nil, fmt.Errorf("vmlinux: segment %d: 0x%X file bytes exceed its memory size 0x%X", i, filesz, memsz)
		case paddr < layout.KernelLoad:
			return nil, fmt.Errorf("vmlinux: segment %d at physical 0x%X: below 0x%X, where the boot structures are", i, paddr, layout.KernelLoad)
		case paddr >= maxPrefAddress || memsz > maxPrefAddress-paddr:
			return nil, fmt.Errorf("vmlinux: segment %d [0x%X, +0x%X) reaches above 4 GiB: this loader runs kernels below 4 GiB", i, paddr, memsz)
		}
		if memsz == 0 {
			continue
		}
		s := segment{addr: paddr, data: img[off : off+filesz], size: memsz}
		for _, o := range k.segments {
			if s.addr < o.addr+o.size && o.addr < s.addr+s.size {
				return nil, fmt.Errorf("vmlinux: segment %d [0x%X, 0x%X) overlaps [0x%X, 0x%X)", i, s.addr, s.addr+s.size, o.addr, o.addr+o.size)
			}
		}
		k.segments = append(k.segments, s)
		if flags&pfExec != 0 && entry >= paddr && entry-paddr < filesz {
			entryOK = true
		}
	}
	if len(k.segments) == 0 {
		return nil, errors.New("vmlinux: no loadable segment")
	}
	if !entryOK {
		return nil, fmt.Errorf("vmlinux: entry point 0x%X is not in the file bytes of an executable segment (a vmlinux's entry is physical)", entry)
	}
	k.entry = entry
	k.Header = vmlinuxHeader(k)
	return k, nil
}

// vmlinuxHeader is the setup header (from offset 0x1F1 of boot_params)
// the loader gives a vmlinux, which has none of its own.
func vmlinuxHeader(k *Kernel) []byte {
	le := binary.LittleEndian
	h := make([]byte, vmlinuxHeaderLength)
	at := func(off int) []byte { return h[off-offSetupSects:] }
	le.PutUint16(at(offBootFlag), bootFlag)
	le.PutUint32(at(offHeaderMagic), headerMagic)
	le.PutUint16(at(offVersion), k.Protocol)
	at(offLoadFlags)[0] = k.LoadFlags
	le.PutUint32(at(offInitrdAddrMax), k.InitrdAddrMax)
	le.PutUint32(at(offKernelAlignment), k.KernelAlignment)
	le.PutUint16(at(offXLoadFlags), k.XLoadFlags)
	le.PutUint32(at(offCmdlineSize), k.CmdlineSize)
	return h
}
