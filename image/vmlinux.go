package image

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/pierrec/lz4/v4"

	"github.com/hyperroot/hyperroot/vmm/boot"
)

// UnpackVmlinux returns the ELF vmlinux inside a bzImage: its payload
// decompressed, as the kernel's own decompressor would, and cut where the
// ELF ends (the relocation table the decompressor applies for KASLR
// follows it). The VMM boots it at its 64-bit entry (boot.ParseVmlinux),
// which saves every guest boot the decompression: under nested emulation,
// seconds. Payloads compressed with LZ4 (Debian's x86 kernels) or gzip are
// unpacked; any other compression is an error.
func UnpackVmlinux(bzImage []byte) ([]byte, error) {
	k, err := boot.ParseBzImage(bzImage)
	if err != nil {
		return nil, err
	}
	payload := k.Code[k.PayloadOffset:][:k.PayloadLength]
	// The build appends the unpacked size (32-bit little-endian) to every
	// compressed payload: the size of the decompressor's output.
	if len(payload) < 8 {
		return nil, fmt.Errorf("kernel payload of %d bytes: too short", len(payload))
	}
	size := binary.LittleEndian.Uint32(payload[len(payload)-4:])
	body := payload[:len(payload)-4]
	var r io.Reader
	switch {
	case bytes.HasPrefix(body, []byte{0x02, 0x21, 0x4C, 0x18}): // LZ4 legacy frames (lz4 -l)
		r = lz4.NewReader(bytes.NewReader(body))
	case bytes.HasPrefix(body, []byte{0x1F, 0x8B}):
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("kernel payload: %w", err)
		}
		r = zr
	default:
		return nil, fmt.Errorf("kernel payload starts % x: only LZ4 and gzip payloads are unpacked", body[:4])
	}
	var out bytes.Buffer
	out.Grow(int(size))
	if _, err := io.Copy(&out, io.LimitReader(r, int64(size)+1)); err != nil {
		return nil, fmt.Errorf("kernel payload: %w", err)
	}
	if out.Len() != int(size) {
		return nil, fmt.Errorf("kernel payload unpacked to %d bytes, its trailer says %d", out.Len(), size)
	}
	img := out.Bytes()
	end, err := elfEnd(img)
	if err != nil {
		return nil, fmt.Errorf("kernel payload: %w", err)
	}
	img = img[:end]
	if _, err := boot.ParseVmlinux(img); err != nil {
		return nil, fmt.Errorf("kernel payload: %w", err)
	}
	return img, nil
}

// elfEnd is the length of the ELF file at the start of b: the end of the
// furthest of its headers, segments and sections.
func elfEnd(b []byte) (int, error) {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return 0, err
	}
	le := binary.LittleEndian
	if len(b) < 64 || f.Class != elf.ELFCLASS64 {
		return 0, fmt.Errorf("not a 64-bit ELF")
	}
	end := uint64(64)
	end = max(end, le.Uint64(b[32:])+uint64(le.Uint16(b[54:]))*uint64(le.Uint16(b[56:]))) // program headers
	end = max(end, le.Uint64(b[40:])+uint64(le.Uint16(b[58:]))*uint64(le.Uint16(b[60:]))) // section headers
	for _, p := range f.Progs {
		end = max(end, p.Off+p.Filesz)
	}
	for _, s := range f.Sections {
		if s.Type != elf.SHT_NOBITS {
			end = max(end, s.Offset+s.FileSize)
		}
	}
	if end > uint64(len(b)) {
		return 0, fmt.Errorf("ELF reaches byte %d of %d", end, len(b))
	}
	return int(end), nil
}
