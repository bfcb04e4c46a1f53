package aml

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// decodePkgLength is an independent reader of the PkgLength format, used to
// check the encoder: it returns the value and the number of bytes read.
func decodePkgLength(b []byte) (v, n int, err error) {
	if len(b) == 0 {
		return 0, 0, fmt.Errorf("empty")
	}
	follow := int(b[0] >> 6)
	if follow == 0 {
		return int(b[0] & 0x3F), 1, nil
	}
	if b[0]&0x30 != 0 {
		return 0, 0, fmt.Errorf("lead byte %#x has bits 4-5 set", b[0])
	}
	if len(b) < 1+follow {
		return 0, 0, fmt.Errorf("truncated")
	}
	v = int(b[0] & 0x0F)
	for i := 1; i <= follow; i++ {
		v |= int(b[i]) << (4 + 8*(i-1))
	}
	return v, 1 + follow, nil
}

func TestPkgLength(t *testing.T) {
	tests := []struct {
		v    int
		want []byte
	}{
		{0, []byte{0x00}},
		{63, []byte{0x3F}},
		{64, []byte{0x40, 0x04}},
		{4095, []byte{0x4F, 0xFF}},
		{4096, []byte{0x80, 0x00, 0x01}},
		{1<<20 - 1, []byte{0x8F, 0xFF, 0xFF}},
		{1 << 20, []byte{0xC0, 0x00, 0x00, 0x01}},
		{1<<28 - 1, []byte{0xCF, 0xFF, 0xFF, 0xFF}},
	}
	for _, tt := range tests {
		got, err := PkgLength(tt.v)
		if err != nil {
			t.Fatalf("PkgLength(%d): %v", tt.v, err)
		}
		if !bytes.Equal(got, tt.want) {
			t.Errorf("PkgLength(%d) = % x, want % x", tt.v, got, tt.want)
		}
		v, n, err := decodePkgLength(got)
		if err != nil || v != tt.v || n != len(got) {
			t.Errorf("decode(PkgLength(%d)) = %d, %d bytes, %v", tt.v, v, n, err)
		}
	}
	for _, bad := range []int{-1, 1 << 28, 1 << 40} {
		if b, err := PkgLength(bad); err == nil {
			t.Errorf("PkgLength(%d) = % x, want error", bad, b)
		}
	}
}

// TestPackageLength checks that a package's length counts its own
// PkgLength bytes and that the shortest encoding is chosen, around each
// size boundary.
func TestPackageLength(t *testing.T) {
	limits := []int{1 << 6, 1 << 12, 1 << 20, 1 << 28}
	var sizes []int
	for _, l := range limits[:3] {
		for d := -5; d <= 1; d++ {
			sizes = append(sizes, l+d)
		}
	}
	sizes = append(sizes, 0, 1, 2*1<<20)
	for _, size := range sizes {
		enc, err := appendPackage(nil, make([]byte, size))
		if err != nil {
			t.Fatalf("body %d: %v", size, err)
		}
		v, n, err := decodePkgLength(enc)
		if err != nil {
			t.Fatalf("body %d: %v", size, err)
		}
		if v != len(enc) || v != size+n {
			t.Errorf("body %d: PkgLength says %d, package is %d bytes (%d length bytes)", size, v, len(enc), n)
		}
		if n > 1 && size+n-1 < limits[n-2] {
			t.Errorf("body %d: used %d length bytes where %d suffice", size, n, n-1)
		}
	}
}

func TestNameString(t *testing.T) {
	tests := []struct {
		in   string
		want string // hex
	}{
		{"_HID", "5f484944"},
		{"_S5", "5f53355f"},
		{`\_SB_`, "5c5f53425f"},
		{`\_SB.PWRB`, "5c2e5f53425f50575242"},
		{`\_SB_.PCI0.S00`, "5c2f035f53425f50434930533030" + "5f"},
		{`^^GED`, "5e5e4745445f"},
		{`\`, "5c00"},
		{`^`, "5e00"},
		{"A.B", "2e415f5f5f425f5f5f"},
	}
	for _, tt := range tests {
		got, err := appendNameString(nil, tt.in)
		if err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		if fmt.Sprintf("%x", got) != tt.want {
			t.Errorf("%q = %x, want %s", tt.in, got, tt.want)
		}
	}
	for _, bad := range []string{"", "1ABC", "abcd", "TOOLONG", `\_SB_..X`, "A.", ".A", `\^A`, "A B", `\\A`} {
		if got, err := appendNameString(nil, bad); err == nil {
			t.Errorf("%q = %x, want error", bad, got)
		}
	}
}

// decodeNameString reads a NameString back into canonical ASL form
// (segments padded to 4 characters).
func decodeNameString(b []byte) (string, error) {
	var sb strings.Builder
	i := 0
	for i < len(b) && (b[i] == '\\' || b[i] == '^') {
		sb.WriteByte(b[i])
		i++
		if b[i-1] == '\\' {
			break
		}
	}
	if i >= len(b) {
		return "", fmt.Errorf("truncated")
	}
	count := 1
	switch b[i] {
	case 0:
		if i+1 != len(b) {
			return "", fmt.Errorf("trailing bytes")
		}
		return sb.String(), nil
	case 0x2E:
		count, i = 2, i+1
	case 0x2F:
		if i+1 >= len(b) {
			return "", fmt.Errorf("truncated")
		}
		count, i = int(b[i+1]), i+2
	}
	if len(b)-i != 4*count {
		return "", fmt.Errorf("%d segments but %d bytes", count, len(b)-i)
	}
	for s := 0; s < count; s++ {
		if s > 0 {
			sb.WriteByte('.')
		}
		sb.Write(b[i+4*s : i+4*s+4])
	}
	return sb.String(), nil
}

func canonicalPath(p string) string {
	n := 0
	for n < len(p) && (p[n] == '\\' || p[n] == '^') {
		n++
	}
	rest := p[n:]
	if rest == "" {
		return p
	}
	segs := strings.Split(rest, ".")
	for i, s := range segs {
		segs[i] = s + strings.Repeat("_", 4-len(s))
	}
	return p[:n] + strings.Join(segs, ".")
}

// FuzzNameString checks that any string either is rejected or encodes to a
// NameString that decodes back to the same path.
func FuzzNameString(f *testing.F) {
	for _, s := range []string{`\_SB_.PCI0`, "^^A.B.C", `\`, "_HID", "a", "", "A..B"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		enc, err := appendNameString(nil, s)
		if err != nil {
			return
		}
		got, err := decodeNameString(enc)
		if err != nil {
			t.Fatalf("%q encoded to %x, which does not decode: %v", s, enc, err)
		}
		if want := canonicalPath(s); got != want {
			t.Fatalf("%q encoded to %x, decodes to %q, want %q", s, enc, got, want)
		}
	})
}

func hexOf(t *testing.T, terms ...Term) string {
	t.Helper()
	b, err := Encode(terms...)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", b)
}

func TestInt(t *testing.T) {
	tests := []struct {
		v    uint64
		want string
	}{
		{0, "00"},
		{1, "01"},
		{2, "0a02"},
		{0xFF, "0aff"},
		{0x100, "0b0001"},
		{0xFFFF, "0bffff"},
		{0x10000, "0c00000100"},
		{0xFED0_0000, "0c0000d0fe"},
		{0xFFFF_FFFF, "0cffffffff"},
		{1 << 32, "0e0000000001000000"},
		{^uint64(0), "0effffffffffffffff"},
	}
	for _, tt := range tests {
		if got := hexOf(t, Int(tt.v)); got != tt.want {
			t.Errorf("Int(%#x) = %s, want %s", tt.v, got, tt.want)
		}
	}
}

func TestEISAID(t *testing.T) {
	tests := map[string]string{
		"PNP0501": "0c41d00501",
		"PNP0303": "0c41d00303",
		"PNP0B00": "0c41d00b00",
		"PNP0C0C": "0c41d00c0c",
		"PNP0A08": "0c41d00a08",
		"QEM0002": "0c44ad0002", // Q=0x11 E=0x05 M=0x0D: 0x11<<2|0x05>>3, 0x05<<5|0x0D
	}
	for id, want := range tests {
		if got := hexOf(t, EISAID(id)); got != want {
			t.Errorf("EISAID(%s) = %s, want %s", id, got, want)
		}
	}
	for _, bad := range []string{"pnp0501", "PNP05", "PNP050G", "P1P0501", "PNP05011"} {
		if _, err := Encode(EISAID(bad)); err == nil {
			t.Errorf("EISAID(%q) encoded without error", bad)
		}
	}
}

// TestTerms compares encodings with bytes worked out by hand from the
// grammar in ACPI 6.5 chapter 20.
func TestTerms(t *testing.T) {
	tests := []struct {
		name string
		term Term
		want string
	}{
		{"Name string", Name("_HID", String("ACPI0013")), "085f4849440d4143504930303133" + "00"},
		{"Name root path", Name(`\_S5`, Package(Int(5), Int(5), Int(0), Int(0))),
			"085c5f53355f" + "12" + "08" + "04" + "0a05" + "0a05" + "00" + "00"},
		{"Scope empty", Scope(`\_SB_`), "10" + "06" + "5c5f53425f"},
		{"Device", Device("PWRB", Name("_UID", Int(0))),
			"5b82" + "0b" + "50575242" + "085f554944" + "00"},
		{"Method", Method("_EVT", 1, true, Store(Path("GDAT"), Local(0))),
			"14" + "0c" + "5f455654" + "09" + "70" + "47444154" + "60"},
		{"Method unserialized 2 args", Method("FOO_", 2, false, Return(Arg(1))),
			"14" + "08" + "464f4f5f" + "02" + "a4" + "69"},
		{"If And Notify", If(And(Local(0), one(), nil), Notify(Path(`\_SB_.PWRB`), Int(0x80))),
			"a0" + "12" + "7b" + "60" + "01" + "00" + "86" + "5c2e5f53425f50575242" + "0a80"},
		{"Else", Else(Return(Int(0))), "a1" + "03" + "a4" + "00"},
		{"LEqual", LEqual(Arg(0), Int(3)), "93" + "68" + "0a03"},
		{"And with target", And(Arg(0), Int(0xF0), Local(2)), "7b" + "68" + "0af0" + "62"},
		{"Buffer", Buffer([]byte{1, 2, 3}), "11" + "06" + "0a03" + "010203"},
		{"Empty buffer", Buffer(nil), "11" + "02" + "00"},
		{"OperationRegion", OperationRegion("GDST", SystemMemory, 0xFED00000, 0x10),
			"5b80" + "47445354" + "00" + "0c0000d0fe" + "0a10"},
		{"OperationRegion IO", OperationRegion("PRT_", SystemIO, 0x600, 1),
			"5b80" + "5052545f" + "01" + "0b0006" + "01"},
		{"Field", Field("GDST", DWordAcc, WriteAsZeros, FieldUnit{Name: "GDAT", Bits: 32}),
			"5b81" + "0b" + "47445354" + "43" + "47444154" + "20"},
		{"Field reserved and wide", Field("REG_", ByteAcc, Preserve,
			FieldUnit{Bits: 8}, FieldUnit{Name: "BIG", Bits: 256}),
			"5b81" + "0e" + "5245475f" + "01" + "00" + "08" + "4249475f" + "4010"},
		{"String empty", String(""), "0d00"},
	}
	for _, tt := range tests {
		if got := hexOf(t, tt.term); got != tt.want {
			t.Errorf("%s:\n got %s\nwant %s", tt.name, got, tt.want)
		}
	}
}

// one is a test shorthand for Int(1).
func one() Term { return Int(1) }

func TestResources(t *testing.T) {
	tests := []struct {
		name string
		res  Resource
		want string
	}{
		{"IO", IO(0x3F8, 0x3F8, 8, 8), "47" + "01" + "f803" + "f803" + "08" + "08"},
		{"IRQNoFlags", IRQNoFlags(4), "22" + "1000"},
		{"IRQNoFlags several", IRQNoFlags(1, 8, 15), "22" + "0281"},
		{"Memory32Fixed", Memory32Fixed(true, 0xFED00000, 0x10),
			"86" + "0900" + "01" + "0000d0fe" + "10000000"},
		{"Memory32Fixed read-only", Memory32Fixed(false, 0xE0000000, 0x10000000),
			"86" + "0900" + "00" + "000000e0" + "00000010"},
		{"Interrupt level high", Interrupt(InterruptFlags{}, 9),
			"89" + "0600" + "01" + "01" + "09000000"},
		{"Interrupt edge low shared wake, 2 GSIs",
			Interrupt(InterruptFlags{EdgeTriggered: true, ActiveLow: true, Shared: true, WakeCapable: true}, 5, 0x100),
			"89" + "0a00" + "1f" + "02" + "05000000" + "00010000"},
		{"Interrupt producer", Interrupt(InterruptFlags{Producer: true}, 3),
			"89" + "0600" + "00" + "01" + "03000000"},
		{"WordBusNumber", WordBusNumber(0, 0xFF),
			"88" + "0d00" + "02" + "0c" + "00" + "0000" + "0000" + "ff00" + "0000" + "0001"},
		{"WordIO", WordIO(0x1000, 0xFFFF),
			"88" + "0d00" + "01" + "0c" + "03" + "0000" + "0010" + "ffff" + "0000" + "00f0"},
		{"DWordMemory", DWordMemory(0xC0000000, 0xDFFFFFFF, NonCacheable),
			"87" + "1700" + "00" + "0c" + "01" + "00000000" + "000000c0" + "ffffffdf" + "00000000" + "00000020"},
		{"QWordMemory", QWordMemory(1<<40, 1<<40+0xFFFFFFFF, Prefetchable),
			"8a" + "2b00" + "00" + "0c" + "07" + "0000000000000000" + "0000000000010000" +
				"ffffffff00010000" + "0000000000000000" + "0000000001000000"},
	}
	for _, tt := range tests {
		got, err := tt.res.appendResource(nil)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if fmt.Sprintf("%x", got) != tt.want {
			t.Errorf("%s:\n got %x\nwant %s", tt.name, got, tt.want)
		}
	}
	// A template is a buffer of the items plus the end tag.
	if got, want := hexOf(t, ResourceTemplate(IRQNoFlags(4))), "11"+"08"+"0a05"+"221000"+"7900"; got != want {
		t.Errorf("ResourceTemplate = %s, want %s", got, want)
	}
}

func TestEncodeErrors(t *testing.T) {
	many := make([]Term, 256)
	for i := range many {
		many[i] = Int(0)
	}
	tests := map[string]Term{
		"nil term":          Scope(`\_SB_`, nil),
		"bad name":          Name("bad", Int(0)),
		"Local8":            Local(8),
		"Arg7":              Arg(7),
		"8 method args":     Method("FOO_", 8, false),
		"256 elements":      Package(many...),
		"NUL in string":     String("a\x00b"),
		"non-ASCII string":  String("é"),
		"Store to nothing":  Store(Int(1), nil),
		"Store nothing":     Store(nil, Local(0)),
		"Notify nothing":    Notify(nil, Int(0x80)),
		"Return nothing":    Return(nil),
		"bad field unit":    Field("REG_", ByteAcc, Preserve, FieldUnit{Name: "x", Bits: 8}),
		"zero-bit field":    Field("REG_", ByteAcc, Preserve, FieldUnit{Name: "X", Bits: 0}),
		"bad access":        Field("REG_", AccessType(9), Preserve),
		"ISA IRQ 16":        ResourceTemplate(IRQNoFlags(16)),
		"no GSIs":           ResourceTemplate(Interrupt(InterruptFlags{})),
		"inverted IO":       ResourceTemplate(IO(0x10, 0x0F, 1, 1)),
		"Memory32 past 4G":  ResourceTemplate(Memory32Fixed(true, 0xFFFFF000, 0x2000)),
		"inverted DWord":    ResourceTemplate(DWordMemory(2, 1, Cacheable)),
		"whole-space DWord": ResourceTemplate(DWordMemory(0, 0xFFFFFFFF, Cacheable)),
		"whole-space QWord": ResourceTemplate(QWordMemory(0, ^uint64(0), Cacheable)),
		"whole-space Word":  ResourceTemplate(WordIO(0, 0xFFFF)),
		"nil resource":      ResourceTemplate(nil),
		"deep error":        Scope(`\_SB_`, Device("DEV0", Method("_EVT", 1, true, If(Local(9))))),
	}
	for name, term := range tests {
		if b, err := Encode(term); err == nil {
			t.Errorf("%s: encoded to %x, want error", name, b)
		}
	}
}

// TestLargeScope exercises multi-byte PkgLengths in a real term: a scope
// whose body crosses 64 and 4096 bytes still decodes to the right length.
func TestLargeScope(t *testing.T) {
	for _, n := range []int{1, 10, 11, 700, 1000} {
		var devs []Term
		for i := 0; i < n; i++ {
			devs = append(devs, Name(fmt.Sprintf("N%03X", i%4096), Int(0)))
		}
		b, err := Encode(Scope(`\_SB_`, devs...))
		if err != nil {
			t.Fatal(err)
		}
		v, _, err := decodePkgLength(b[1:])
		if err != nil || v != len(b)-1 {
			t.Errorf("%d names: PkgLength %d (%v), scope body is %d bytes", n, v, err, len(b)-1)
		}
	}
}
