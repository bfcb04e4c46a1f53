package aml

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Resource is one resource descriptor (ACPI 6.5, 6.4) of a ResourceTemplate.
type Resource interface {
	appendResource(dst []byte) ([]byte, error)
}

type resourceFunc func(dst []byte) ([]byte, error)

func (f resourceFunc) appendResource(dst []byte) ([]byte, error) { return f(dst) }

// Descriptor tags: small items are one byte (type<<3 | length), large
// items are 0x80|type followed by a 16-bit length.
const (
	tagIRQNoFlags    = 0x22 // IRQ descriptor, 2 bytes: no information byte
	tagIO            = 0x47
	tagEnd           = 0x79
	tagMemory32Fixed = 0x86
	tagDWordAddress  = 0x87
	tagWordAddress   = 0x88
	tagExtendedIRQ   = 0x89
	tagQWordAddress  = 0x8A
)

// ResourceTemplate is a buffer holding items followed by the end tag, the
// value of a _CRS object.
func ResourceTemplate(items ...Resource) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		var body []byte
		var err error
		for _, it := range items {
			if it == nil {
				return nil, errors.New("aml: nil resource")
			}
			if body, err = it.appendResource(body); err != nil {
				return nil, err
			}
		}
		// A zero checksum tells the OS not to verify one.
		body = append(body, tagEnd, 0)
		return Buffer(body).appendAML(dst)
	})
}

// IO is a fixed-decode range of length ports somewhere in [min, max],
// aligned to align, with full 16-bit address decoding.
func IO(min, max uint16, align, length uint8) Resource {
	return resourceFunc(func(dst []byte) ([]byte, error) {
		if max < min {
			return nil, fmt.Errorf("aml: IO range %#x-%#x is inverted", min, max)
		}
		dst = append(dst, tagIO, 1) // bit 0: decodes 16 address lines
		dst = binary.LittleEndian.AppendUint16(dst, min)
		dst = binary.LittleEndian.AppendUint16(dst, max)
		return append(dst, align, length), nil
	})
}

// IRQNoFlags lists ISA IRQs (0-15) that are edge-triggered, active-high and
// exclusive, the ISA defaults.
func IRQNoFlags(irqs ...uint8) Resource {
	return resourceFunc(func(dst []byte) ([]byte, error) {
		var mask uint16
		for _, irq := range irqs {
			if irq > 15 {
				return nil, fmt.Errorf("aml: ISA IRQ %d out of range 0-15", irq)
			}
			mask |= 1 << irq
		}
		return binary.LittleEndian.AppendUint16(append(dst, tagIRQNoFlags), mask), nil
	})
}

// Memory32Fixed is a fixed 32-bit MMIO range.
func Memory32Fixed(readWrite bool, base, length uint32) Resource {
	return resourceFunc(func(dst []byte) ([]byte, error) {
		if length != 0 && uint64(base)+uint64(length) > 1<<32 {
			return nil, fmt.Errorf("aml: Memory32Fixed %#x+%#x crosses 4 GiB", base, length)
		}
		dst = binary.LittleEndian.AppendUint16(append(dst, tagMemory32Fixed), 9)
		dst = append(dst, boolBit(readWrite, 0))
		dst = binary.LittleEndian.AppendUint32(dst, base)
		return binary.LittleEndian.AppendUint32(dst, length), nil
	})
}

// InterruptFlags describe an extended Interrupt descriptor. The zero value
// is ResourceConsumer, Level, ActiveHigh, Exclusive, not wake-capable.
type InterruptFlags struct {
	Producer      bool
	EdgeTriggered bool
	ActiveLow     bool
	Shared        bool
	WakeCapable   bool
}

// Interrupt is an extended interrupt descriptor listing global system
// interrupts (GSIs), which, unlike IRQNoFlags, may be above 15 and carry
// level/polarity flags.
func Interrupt(flags InterruptFlags, gsis ...uint32) Resource {
	return resourceFunc(func(dst []byte) ([]byte, error) {
		if len(gsis) == 0 || len(gsis) > 255 {
			return nil, fmt.Errorf("aml: Interrupt with %d GSIs (1-255 allowed)", len(gsis))
		}
		dst = binary.LittleEndian.AppendUint16(append(dst, tagExtendedIRQ), uint16(2+4*len(gsis)))
		f := boolBit(!flags.Producer, 0) | boolBit(flags.EdgeTriggered, 1) |
			boolBit(flags.ActiveLow, 2) | boolBit(flags.Shared, 3) | boolBit(flags.WakeCapable, 4)
		dst = append(dst, f, byte(len(gsis)))
		for _, g := range gsis {
			dst = binary.LittleEndian.AppendUint32(dst, g)
		}
		return dst, nil
	})
}

// Cacheability is the memory attribute of a DWordMemory/QWordMemory window.
type Cacheability byte

// Memory attributes (type-specific flags bits 1-2).
const (
	NonCacheable   Cacheability = 0
	Cacheable      Cacheability = 1
	WriteCombining Cacheability = 2
	Prefetchable   Cacheability = 3
)

// Address space resource types.
const (
	spaceMemory = 0
	spaceIO     = 1
	spaceBus    = 2
)

// The Word/DWord/QWord descriptors below describe windows a bridge decodes
// and forwards (a PCI host bridge's _CRS): ResourceProducer, PosDecode,
// MinFixed, MaxFixed, no translation, zero granularity, length max-min+1.
const windowFlags = 1<<2 | 1<<3 // _MIF | _MAF; bit 0 clear = producer

// WordBusNumber is a bridge's bus number window [min, max].
func WordBusNumber(min, max uint16) Resource {
	return wordWindow(spaceBus, 0, min, max)
}

// WordIO is a bridge's I/O port window [min, max], covering the entire
// range (ISA and non-ISA addresses).
func WordIO(min, max uint16) Resource {
	return wordWindow(spaceIO, 0x3, min, max)
}

func wordWindow(space, typeFlags byte, min, max uint16) Resource {
	return resourceFunc(func(dst []byte) ([]byte, error) {
		if max < min {
			return nil, fmt.Errorf("aml: Word window %#x-%#x is inverted", min, max)
		}
		length := uint32(max) - uint32(min) + 1
		if length > 0xFFFF {
			return nil, fmt.Errorf("aml: Word window %#x-%#x is too long", min, max)
		}
		dst = binary.LittleEndian.AppendUint16(append(dst, tagWordAddress), 13)
		dst = append(dst, space, windowFlags, typeFlags)
		for _, v := range []uint16{0, min, max, 0, uint16(length)} {
			dst = binary.LittleEndian.AppendUint16(dst, v)
		}
		return dst, nil
	})
}

// DWordMemory is a bridge's read-write 32-bit MMIO window [min, max].
func DWordMemory(min, max uint32, cache Cacheability) Resource {
	return resourceFunc(func(dst []byte) ([]byte, error) {
		if max < min || cache > Prefetchable {
			return nil, fmt.Errorf("aml: DWordMemory %#x-%#x: inverted or bad attribute", min, max)
		}
		length := uint64(max) - uint64(min) + 1
		if length > 0xFFFF_FFFF {
			return nil, fmt.Errorf("aml: DWordMemory %#x-%#x is too long", min, max)
		}
		dst = binary.LittleEndian.AppendUint16(append(dst, tagDWordAddress), 23)
		dst = append(dst, spaceMemory, windowFlags, 1|byte(cache)<<1)
		for _, v := range []uint32{0, min, max, 0, uint32(length)} {
			dst = binary.LittleEndian.AppendUint32(dst, v)
		}
		return dst, nil
	})
}

// QWordMemory is a bridge's read-write 64-bit MMIO window [min, max].
func QWordMemory(min, max uint64, cache Cacheability) Resource {
	return resourceFunc(func(dst []byte) ([]byte, error) {
		if max < min || cache > Prefetchable {
			return nil, fmt.Errorf("aml: QWordMemory %#x-%#x: inverted or bad attribute", min, max)
		}
		length := max - min + 1
		if length == 0 {
			return nil, errors.New("aml: QWordMemory cannot cover the whole 64-bit space")
		}
		dst = binary.LittleEndian.AppendUint16(append(dst, tagQWordAddress), 43)
		dst = append(dst, spaceMemory, windowFlags, 1|byte(cache)<<1)
		for _, v := range []uint64{0, min, max, 0, length} {
			dst = binary.LittleEndian.AppendUint64(dst, v)
		}
		return dst, nil
	})
}

func boolBit(b bool, bit uint) byte {
	if b {
		return 1 << bit
	}
	return 0
}
