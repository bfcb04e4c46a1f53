// Package aml encodes the small subset of ACPI Machine Language (ACPI 6.x,
// chapter 20) that a VMM needs to describe its devices in a DSDT.
//
// Callers build a tree of Terms with the constructors below (which mirror the
// ASL operators of the same name) and serialise it with Encode. Constructors
// never fail; invalid arguments (a bad name, a too-long package) are reported
// by Encode, so a table builder has one error to check.
package aml

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Term is one piece of AML: an object declaration, a statement or an
// expression.
type Term interface {
	appendAML(dst []byte) ([]byte, error)
}

type termFunc func(dst []byte) ([]byte, error)

func (f termFunc) appendAML(dst []byte) ([]byte, error) { return f(dst) }

// Opcodes (ACPI 6.5, 20.3).
const (
	zeroOp        = 0x00
	oneOp         = 0x01
	nameOp        = 0x08
	bytePrefix    = 0x0A
	wordPrefix    = 0x0B
	dwordPrefix   = 0x0C
	stringPrefix  = 0x0D
	qwordPrefix   = 0x0E
	scopeOp       = 0x10
	bufferOp      = 0x11
	packageOp     = 0x12
	methodOp      = 0x14
	dualNamePfx   = 0x2E
	multiNamePfx  = 0x2F
	extOpPrefix   = 0x5B
	rootChar      = '\\'
	parentChar    = '^'
	local0Op      = 0x60
	arg0Op        = 0x68
	storeOp       = 0x70
	andOp         = 0x7B
	notifyOp      = 0x86
	lEqualOp      = 0x93
	ifOp          = 0xA0
	elseOp        = 0xA1
	returnOp      = 0xA4
	opRegionExtOp = 0x80 // after extOpPrefix
	fieldExtOp    = 0x81
	deviceExtOp   = 0x82
	nullName      = 0x00
)

// Encode serialises terms, in order, into an AML byte stream (a TermList,
// the body of a DefinitionBlock).
func Encode(terms ...Term) ([]byte, error) {
	return appendTerms(nil, terms)
}

func appendTerms(dst []byte, terms []Term) ([]byte, error) {
	var err error
	for _, t := range terms {
		if t == nil {
			return nil, errors.New("aml: nil term")
		}
		if dst, err = t.appendAML(dst); err != nil {
			return nil, err
		}
	}
	return dst, nil
}

// PkgLength returns the encoding of the value v in the PkgLength format
// (20.2.4): one byte for v < 64, otherwise a lead byte holding the count of
// following bytes and the low 4 bits, then 1-3 bytes of the remaining bits.
// For a package the value counts the PkgLength bytes themselves; for a field
// unit it is the width in bits. Values of 2^28 and above do not fit.
func PkgLength(v int) ([]byte, error) {
	return appendPkgLengthValue(nil, v)
}

func appendPkgLengthValue(dst []byte, v int) ([]byte, error) {
	switch {
	case v < 0:
		return nil, fmt.Errorf("aml: negative PkgLength %d", v)
	case v < 1<<6:
		return append(dst, byte(v)), nil
	case v < 1<<12:
		return append(dst, 1<<6|byte(v&0xF), byte(v>>4)), nil
	case v < 1<<20:
		return append(dst, 2<<6|byte(v&0xF), byte(v>>4), byte(v>>12)), nil
	case v < 1<<28:
		return append(dst, 3<<6|byte(v&0xF), byte(v>>4), byte(v>>12), byte(v>>20)), nil
	}
	return nil, fmt.Errorf("aml: PkgLength %d does not fit in 28 bits", v)
}

// appendPackage appends the PkgLength for a package whose contents after
// the PkgLength are body, then body. The encoded length includes its own
// bytes, so the encoding size is the smallest n with body+n representable
// in n bytes.
func appendPackage(dst, body []byte) ([]byte, error) {
	limits := [...]int{1 << 6, 1 << 12, 1 << 20, 1 << 28}
	for n, limit := range limits {
		if total := len(body) + n + 1; total < limit {
			dst, err := appendPkgLengthValue(dst, total)
			if err != nil {
				return nil, err
			}
			return append(dst, body...), nil
		}
	}
	return nil, fmt.Errorf("aml: package of %d bytes is too large", len(body))
}

// nameSeg validates and pads one path segment to the 4-byte NameSeg form:
// a leading A-Z or '_', then A-Z, 0-9 or '_', padded with '_' as ASL does.
func nameSeg(s string) ([4]byte, error) {
	var seg [4]byte
	if len(s) == 0 || len(s) > 4 {
		return seg, fmt.Errorf("aml: name segment %q must have 1-4 characters", s)
	}
	for i := range seg {
		c := byte('_')
		if i < len(s) {
			c = s[i]
		}
		ok := c == '_' || (c >= 'A' && c <= 'Z') || (i > 0 && c >= '0' && c <= '9')
		if !ok {
			return seg, fmt.Errorf("aml: invalid character %q in name segment %q", c, s)
		}
		seg[i] = c
	}
	return seg, nil
}

// appendNameString encodes an ASL path such as `\_SB_.PCI0`, `^^FOO`,
// `_HID` or `\` (20.2.2): root or parent prefixes, then nothing (NullName),
// one NameSeg, a DualNamePath or a MultiNamePath.
func appendNameString(dst []byte, path string) ([]byte, error) {
	rest := path
	switch {
	case strings.HasPrefix(rest, `\`):
		dst = append(dst, rootChar)
		rest = rest[1:]
	default:
		for strings.HasPrefix(rest, "^") {
			dst = append(dst, parentChar)
			rest = rest[1:]
		}
	}
	if rest == "" {
		if len(path) == 0 {
			return nil, errors.New("aml: empty name")
		}
		return append(dst, nullName), nil
	}
	parts := strings.Split(rest, ".")
	if len(parts) > 255 {
		return nil, fmt.Errorf("aml: name %q has more than 255 segments", path)
	}
	switch len(parts) {
	case 1:
	case 2:
		dst = append(dst, dualNamePfx)
	default:
		dst = append(dst, multiNamePfx, byte(len(parts)))
	}
	for _, p := range parts {
		seg, err := nameSeg(p)
		if err != nil {
			return nil, fmt.Errorf("name %q: %w", path, err)
		}
		dst = append(dst, seg[:]...)
	}
	return dst, nil
}

// Path is a reference to a named object, e.g. Path(`\_SB_.PWRB`) as the
// object of a Notify.
func Path(name string) Term {
	return termFunc(func(dst []byte) ([]byte, error) { return appendNameString(dst, name) })
}

// Int is an integer constant in its shortest encoding: ZeroOp, OneOp, or a
// Byte/Word/DWord/QWord prefix followed by the little-endian value.
func Int(v uint64) Term {
	return termFunc(func(dst []byte) ([]byte, error) { return appendInt(dst, v), nil })
}

func appendInt(dst []byte, v uint64) []byte {
	switch {
	case v == 0:
		return append(dst, zeroOp)
	case v == 1:
		return append(dst, oneOp)
	case v <= 0xFF:
		return append(dst, bytePrefix, byte(v))
	case v <= 0xFFFF:
		return binary.LittleEndian.AppendUint16(append(dst, wordPrefix), uint16(v))
	case v <= 0xFFFF_FFFF:
		return binary.LittleEndian.AppendUint32(append(dst, dwordPrefix), uint32(v))
	}
	return binary.LittleEndian.AppendUint64(append(dst, qwordPrefix), v)
}

// String is a string constant; AML strings are ASCII 0x01-0x7F.
func String(s string) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		for i := 0; i < len(s); i++ {
			if s[i] == 0 || s[i] > 0x7F {
				return nil, fmt.Errorf("aml: string %q has a non-ASCII or NUL byte", s)
			}
		}
		dst = append(dst, stringPrefix)
		dst = append(dst, s...)
		return append(dst, 0), nil
	})
}

// EISAID is the compressed 32-bit form of a PNP id such as "PNP0501": three
// letters in 5 bits each, then four hex digits, stored so that the bytes in
// memory read "PNP" (big-endian letters) then 0x05, 0x01. It is always
// encoded as a DWord so disassemblers recognise it.
func EISAID(id string) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		v, err := eisaID(id)
		if err != nil {
			return nil, err
		}
		return binary.LittleEndian.AppendUint32(append(dst, dwordPrefix), v), nil
	})
}

func eisaID(id string) (uint32, error) {
	if len(id) != 7 {
		return 0, fmt.Errorf("aml: EISA id %q must be 3 letters and 4 hex digits", id)
	}
	var b [4]byte
	for i := 0; i < 3; i++ {
		if id[i] < 'A' || id[i] > 'Z' {
			return 0, fmt.Errorf("aml: EISA id %q: %q is not an upper-case letter", id, id[i])
		}
	}
	c0, c1, c2 := id[0]-0x40, id[1]-0x40, id[2]-0x40
	b[0] = c0<<2 | c1>>3
	b[1] = c1<<5 | c2
	for i := 0; i < 2; i++ {
		hi, ok1 := hexDigit(id[3+2*i])
		lo, ok2 := hexDigit(id[4+2*i])
		if !ok1 || !ok2 {
			return 0, fmt.Errorf("aml: EISA id %q: product number is not hex", id)
		}
		b[2+i] = hi<<4 | lo
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// Name declares a named data object: Name(name, value).
func Name(name string, value Term) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		dst, err := appendNameString(append(dst, nameOp), name)
		if err != nil {
			return nil, err
		}
		return appendTerms(dst, []Term{value})
	})
}

// pkgTerm encodes op, PkgLength, then what head and body append.
func pkgTerm(op []byte, head func([]byte) ([]byte, error), body []Term) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		var inner []byte
		var err error
		if head != nil {
			if inner, err = head(inner); err != nil {
				return nil, err
			}
		}
		if inner, err = appendTerms(inner, body); err != nil {
			return nil, err
		}
		return appendPackage(append(dst, op...), inner)
	})
}

func nameHead(name string) func([]byte) ([]byte, error) {
	return func(dst []byte) ([]byte, error) { return appendNameString(dst, name) }
}

// Scope opens an existing namespace scope (such as `\_SB_`) and declares
// body inside it.
func Scope(name string, body ...Term) Term {
	return pkgTerm([]byte{scopeOp}, nameHead(name), body)
}

// Device declares a device object with body (its _HID, _CRS, ...) inside.
func Device(name string, body ...Term) Term {
	return pkgTerm([]byte{extOpPrefix, deviceExtOp}, nameHead(name), body)
}

// Method declares a control method taking args (0-7) arguments. A
// serialized method may create named objects safely when re-entered.
func Method(name string, args int, serialized bool, body ...Term) Term {
	head := func(dst []byte) ([]byte, error) {
		if args < 0 || args > 7 {
			return nil, fmt.Errorf("aml: method %s: %d arguments (0-7 allowed)", name, args)
		}
		dst, err := appendNameString(dst, name)
		if err != nil {
			return nil, err
		}
		flags := byte(args)
		if serialized {
			flags |= 1 << 3
		}
		return append(dst, flags), nil
	}
	return pkgTerm([]byte{methodOp}, head, body)
}

// If runs body when predicate evaluates to a non-zero integer.
func If(predicate Term, body ...Term) Term {
	head := func(dst []byte) ([]byte, error) { return appendTerms(dst, []Term{predicate}) }
	return pkgTerm([]byte{ifOp}, head, body)
}

// Else runs body when the If immediately before it did not.
func Else(body ...Term) Term {
	return pkgTerm([]byte{elseOp}, nil, body)
}

// Package is a fixed package of at most 255 elements (data objects or names).
func Package(elements ...Term) Term {
	head := func(dst []byte) ([]byte, error) {
		if len(elements) > 255 {
			return nil, fmt.Errorf("aml: package of %d elements (255 max)", len(elements))
		}
		return append(dst, byte(len(elements))), nil
	}
	return pkgTerm([]byte{packageOp}, head, elements)
}

// Buffer is a buffer object initialised with data.
func Buffer(data []byte) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		inner := appendInt(nil, uint64(len(data)))
		inner = append(inner, data...)
		return appendPackage(append(dst, bufferOp), inner)
	})
}

// Local is LocalN, a method's scratch variable (N = 0-7).
func Local(n int) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		if n < 0 || n > 7 {
			return nil, fmt.Errorf("aml: Local%d does not exist", n)
		}
		return append(dst, local0Op+byte(n)), nil
	})
}

// Arg is ArgN, a method's argument (N = 0-6).
func Arg(n int) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		if n < 0 || n > 6 {
			return nil, fmt.Errorf("aml: Arg%d does not exist", n)
		}
		return append(dst, arg0Op+byte(n)), nil
	})
}

// opTerms encodes an opcode followed by operand terms; a nil operand in a
// target position becomes NullName ("no target").
func opTerms(op byte, operands ...Term) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		dst = append(dst, op)
		var err error
		for _, o := range operands {
			if o == nil {
				dst = append(dst, nullName)
				continue
			}
			if dst, err = o.appendAML(dst); err != nil {
				return nil, err
			}
		}
		return dst, nil
	})
}

// Store copies source into destination (a name, LocalN or ArgN).
func Store(source, destination Term) Term {
	if source == nil || destination == nil {
		return errTerm(errors.New("aml: Store needs a source and a destination"))
	}
	return opTerms(storeOp, source, destination)
}

// And is the bitwise AND of a and b, also stored in target unless target is
// nil.
func And(a, b, target Term) Term {
	if a == nil || b == nil {
		return errTerm(errors.New("aml: And needs two operands"))
	}
	return opTerms(andOp, a, b, target)
}

// LEqual is 1 (Ones) when a equals b, else 0.
func LEqual(a, b Term) Term {
	if a == nil || b == nil {
		return errTerm(errors.New("aml: LEqual needs two operands"))
	}
	return opTerms(lEqualOp, a, b)
}

// Notify sends value (e.g. 0x80 for a button press) to the driver of object.
func Notify(object, value Term) Term {
	if object == nil || value == nil {
		return errTerm(errors.New("aml: Notify needs an object and a value"))
	}
	return opTerms(notifyOp, object, value)
}

// Return ends the method with value.
func Return(value Term) Term {
	if value == nil {
		return errTerm(errors.New("aml: Return needs a value"))
	}
	return opTerms(returnOp, value)
}

func errTerm(err error) Term {
	return termFunc(func([]byte) ([]byte, error) { return nil, err })
}

// RegionSpace is the address space of an OperationRegion.
type RegionSpace byte

// Region spaces used by a VMM.
const (
	SystemMemory RegionSpace = 0x00
	SystemIO     RegionSpace = 0x01
)

// OperationRegion declares a region of length bytes at offset in space, to
// be carved into named fields by Field.
func OperationRegion(name string, space RegionSpace, offset, length uint64) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		dst, err := appendNameString(append(dst, extOpPrefix, opRegionExtOp), name)
		if err != nil {
			return nil, err
		}
		dst = append(dst, byte(space))
		dst = appendInt(dst, offset)
		return appendInt(dst, length), nil
	})
}

// AccessType is the width the interpreter uses to access a field.
type AccessType byte

// Access widths (FieldFlags bits 0-3).
const (
	AnyAcc   AccessType = 0
	ByteAcc  AccessType = 1
	WordAcc  AccessType = 2
	DWordAcc AccessType = 3
	QWordAcc AccessType = 4
)

// UpdateRule says what the interpreter writes in the bits of an access that
// lie outside the field being written.
type UpdateRule byte

// Update rules (FieldFlags bits 5-6).
const (
	Preserve     UpdateRule = 0
	WriteAsOnes  UpdateRule = 1
	WriteAsZeros UpdateRule = 2
)

// FieldUnit is one entry of a Field: a named unit of Bits bits, or, with an
// empty Name, Bits reserved (skipped) bits.
type FieldUnit struct {
	Name string
	Bits int
}

// Field declares named bit fields over the OperationRegion called region,
// laid out from its start in order. Accesses take no global lock (NoLock):
// the VMM's registers need no firmware/OS arbitration.
func Field(region string, access AccessType, update UpdateRule, units ...FieldUnit) Term {
	head := func(dst []byte) ([]byte, error) {
		if access > QWordAcc || update > WriteAsZeros {
			return nil, fmt.Errorf("aml: field %s: bad access type or update rule", region)
		}
		dst, err := appendNameString(dst, region)
		if err != nil {
			return nil, err
		}
		dst = append(dst, byte(access)|byte(update)<<5)
		for _, u := range units {
			if u.Bits <= 0 {
				return nil, fmt.Errorf("aml: field unit %q of %s: %d bits", u.Name, region, u.Bits)
			}
			if u.Name == "" {
				dst = append(dst, 0x00) // ReservedField
			} else {
				seg, err := nameSeg(u.Name)
				if err != nil {
					return nil, fmt.Errorf("field %s: %w", region, err)
				}
				dst = append(dst, seg[:]...)
			}
			if dst, err = appendPkgLengthValue(dst, u.Bits); err != nil {
				return nil, err
			}
		}
		return dst, nil
	}
	return pkgTerm([]byte{extOpPrefix, fieldExtOp}, head, nil)
}
