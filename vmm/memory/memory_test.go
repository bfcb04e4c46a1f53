package memory

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/vmm/layout"
)

const (
	mib = 1 << 20
	gib = 1 << 30
)

func newGuest(t testing.TB, size uint64) *Guest {
	t.Helper()
	g, err := New(size, Options{})
	if err != nil {
		t.Fatalf("New(%#x): %v", size, err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func TestNewRejectsBadSizes(t *testing.T) {
	for _, tc := range []struct {
		name string
		size uint64
		opts Options
	}{
		{"zero", 0, Options{}},
		{"not page multiple", 4096 + 1, Options{}},
		{"half page", 2048, Options{}},
		{"2M pages, 4K size", 4096, Options{HugePages: Huge2M}},
		{"1G pages, 2M size", 2 * mib, Options{HugePages: Huge1G}},
		{"odd huge size", 64 * mib, Options{HugePages: 4 * mib}},
		{"absurdly large", 1 << 62, Options{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := New(tc.size, tc.opts)
			if err == nil {
				g.Close()
				t.Fatalf("New(%#x, %+v) succeeded", tc.size, tc.opts)
			}
		})
	}
}

// freeHugePages reads the host's free 2 MiB page count.
func freeHugePages(t *testing.T) int {
	b, err := os.ReadFile("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// TestHugePages checks both outcomes: with free 2 MiB pages the guest gets
// them; without, New fails with a message that names the remedy.
func TestHugePages(t *testing.T) {
	g, err := New(2*mib, Options{HugePages: Huge2M})
	if freeHugePages(t) == 0 {
		if err == nil {
			g.Close()
			t.Fatal("New with huge pages succeeded on a host with no free huge pages")
		}
		if !strings.Contains(err.Error(), "huge pages") {
			t.Fatalf("error does not mention huge pages: %v", err)
		}
		return
	}
	if err != nil {
		t.Fatalf("New with huge pages: %v", err)
	}
	defer g.Close()
	if err := g.PutUint64(0, 0x1122334455667788); err != nil {
		t.Fatal(err)
	}
	if v, err := g.Uint64(0); err != nil || v != 0x1122334455667788 {
		t.Fatalf("Uint64 = %#x, %v", v, err)
	}
}

func TestRegionsSplitAtHole(t *testing.T) {
	for _, tc := range []struct {
		size uint64
		want []Region // Host filled in below
	}{
		{64 * mib, []Region{{GPA: 0, Size: 64 * mib}}},
		{3 * gib, []Region{{GPA: 0, Size: 3 * gib}}},
		{3*gib + 4096, []Region{{GPA: 0, Size: 3 * gib}, {GPA: 4 * gib, Size: 4096, Offset: 3 * gib}}},
		{5 * gib, []Region{{GPA: 0, Size: 3 * gib}, {GPA: 4 * gib, Size: 2 * gib, Offset: 3 * gib}}},
		{7 * gib, []Region{{GPA: 0, Size: 3 * gib}, {GPA: 4 * gib, Size: 4 * gib, Offset: 3 * gib}}},
	} {
		g := newGuest(t, tc.size)
		got := g.Regions()
		if len(got) != len(tc.want) {
			t.Fatalf("size %#x: %d regions, want %d: %+v", tc.size, len(got), len(tc.want), got)
		}
		var total uint64
		for i, r := range got {
			w := tc.want[i]
			w.Host = uintptr(unsafe.Pointer(&g.mem[0])) + uintptr(w.Offset)
			if r != w {
				t.Errorf("size %#x region %d = %+v, want %+v", tc.size, i, r, w)
			}
			if r.GPA < layout.MMIO32End && r.GPA+r.Size > layout.MMIO32Start {
				t.Errorf("size %#x region %d overlaps the MMIO hole: %+v", tc.size, i, r)
			}
			total += r.Size
		}
		if total != tc.size || g.Size() != tc.size {
			t.Errorf("size %#x: regions hold %#x bytes, Size() = %#x", tc.size, total, g.Size())
		}
		// MainRange is the largest region, the first of equals.
		big := got[0]
		for _, r := range got[1:] {
			if r.Size > big.Size {
				big = r
			}
		}
		if gpa, ram := g.MainRange(); gpa != big.GPA || uint64(len(ram)) != big.Size || uintptr(unsafe.Pointer(&ram[0])) != big.Host {
			t.Errorf("size %#x: MainRange at %#x, %#x bytes; want region %+v", tc.size, gpa, len(ram), big)
		}
	}
}

func TestSliceBounds(t *testing.T) {
	g := newGuest(t, 5*gib) // sparse memfd: costs nothing until touched
	for _, tc := range []struct {
		name   string
		gpa, n uint64
		ok     bool
	}{
		{"first byte", 0, 1, true},
		{"whole low range", 0, 3 * gib, true},
		{"last low byte", 3*gib - 1, 1, true},
		{"first high byte", 4 * gib, 1, true},
		{"last high byte", 6*gib - 1, 1, true},
		{"whole high range", 4 * gib, 2 * gib, true},
		{"zero length", 0x1000, 0, false},
		{"zero length in hole", 3 * gib, 0, false},
		{"in hole", 3 * gib, 1, false},
		{"in hole top", 4*gib - 8, 8, false},
		{"straddles into hole", 3*gib - 4, 8, false},
		{"straddles out of hole", 4*gib - 4, 8, false},
		{"spans hole", 3*gib - 1, gib + 2, false},
		{"past the end", 6 * gib, 1, false},
		{"straddles the end", 6*gib - 4, 8, false},
		{"gpa near 2^64", ^uint64(0) - 3, 4, false},
		{"length wraps to low RAM", 0x1000, ^uint64(0) - 0xfff + 0x10, false},
		{"gpa+n wraps exactly", 4 * gib, ^uint64(0) - 4*gib + 2, false},
		{"huge length", 0, ^uint64(0), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := g.Slice(tc.gpa, tc.n)
			if !tc.ok {
				if err == nil || !errors.Is(err, ErrBounds) {
					t.Fatalf("Slice(%#x, %#x) = len %d, %v; want ErrBounds", tc.gpa, tc.n, len(s), err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Slice(%#x, %#x): %v", tc.gpa, tc.n, err)
			}
			if uint64(len(s)) != tc.n || uint64(cap(s)) != tc.n {
				t.Fatalf("Slice(%#x, %#x): len %d cap %d", tc.gpa, tc.n, len(s), cap(s))
			}
		})
	}
}

// TestSharedMemfd shows that the memfd, not the mapping, is guest RAM: bytes
// written through Slice are what a second reader of the fd sees, at the
// offset Regions reports, including above the hole.
func TestSharedMemfd(t *testing.T) {
	g := newGuest(t, 5*gib)
	for _, gpa := range []uint64{0x1234, 3*gib - 16, 4 * gib, 6*gib - 16} {
		s, err := g.Slice(gpa, 16)
		if err != nil {
			t.Fatal(err)
		}
		want := []byte("0123456789abcdef")
		want[0] = byte(gpa >> 28)
		copy(s, want)
		off := gpa
		if gpa >= layout.RAM64Start {
			off = gpa - layout.RAM64Start + layout.MMIO32Start
		}
		got := make([]byte, 16)
		if _, err := unix.Pread(g.Fd(), got, int64(off)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("gpa %#x: memfd at %#x holds %q, want %q", gpa, off, got, want)
		}
		// And the other way round: a write to the fd shows in the guest.
		if _, err := unix.Pwrite(g.Fd(), []byte("XY"), int64(off)); err != nil {
			t.Fatal(err)
		}
		if v, err := g.Uint16(gpa); err != nil || v != 'X'|'Y'<<8 {
			t.Errorf("gpa %#x: Uint16 after pwrite = %#x, %v", gpa, v, err)
		}
	}
}

func TestReadWriteAt(t *testing.T) {
	g := newGuest(t, 4*mib)
	if err := g.WriteAt([]byte("hello"), 0x2000); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 5)
	if err := g.ReadAt(p, 0x2000); err != nil || string(p) != "hello" {
		t.Fatalf("ReadAt = %q, %v", p, err)
	}
	if err := g.ReadAt(p, 4*mib-2); !errors.Is(err, ErrBounds) {
		t.Fatalf("ReadAt past end: %v", err)
	}
	if err := g.WriteAt(p, 4*mib-2); !errors.Is(err, ErrBounds) {
		t.Fatalf("WriteAt past end: %v", err)
	}
	// A failed write must not write a partial prefix.
	if v, _ := g.Uint16(4*mib - 2); v != 0 {
		t.Fatalf("failed WriteAt left %#x behind", v)
	}
	if err := g.ReadAt(nil, 1<<63); err != nil {
		t.Fatalf("empty ReadAt: %v", err)
	}

	if err := g.PutUint16(0x10, 0xbeef); err != nil {
		t.Fatal(err)
	}
	if err := g.PutUint32(0x20, 0xdeadbeef); err != nil {
		t.Fatal(err)
	}
	if err := g.PutUint64(0x30, 0x0102030405060708); err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, 8)
	g.ReadAt(raw, 0x30)
	if !bytes.Equal(raw, []byte{8, 7, 6, 5, 4, 3, 2, 1}) {
		t.Fatalf("PutUint64 is not little endian: % x", raw)
	}
	if v, err := g.Uint16(0x10); err != nil || v != 0xbeef {
		t.Errorf("Uint16 = %#x, %v", v, err)
	}
	if v, err := g.Uint32(0x20); err != nil || v != 0xdeadbeef {
		t.Errorf("Uint32 = %#x, %v", v, err)
	}
	if v, err := g.Uint64(0x30); err != nil || v != 0x0102030405060708 {
		t.Errorf("Uint64 = %#x, %v", v, err)
	}
	if _, err := g.Uint64(4*mib - 4); err == nil {
		t.Error("Uint64 straddling the end succeeded")
	}
	if err := g.PutUint32(4*mib-2, 1); err == nil {
		t.Error("PutUint32 straddling the end succeeded")
	}
}

func TestCloseRevokesAccess(t *testing.T) {
	g, err := New(1*mib, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Slice(0, 1); err == nil {
		t.Fatal("Slice after Close succeeded")
	}
	if err := g.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

type fakeVM struct {
	slots []Region
	fail  int // fail the call with this index (1-based); 0 never
}

func (f *fakeVM) SetUserMemoryRegion(slot, flags uint32, gpa, size uint64, host uintptr) error {
	if len(f.slots)+1 == f.fail {
		return errors.New("injected")
	}
	f.slots = append(f.slots, Region{GPA: gpa, Size: size, Host: host, Offset: uint64(slot)})
	return nil
}

func TestRegisterAndSlots(t *testing.T) {
	g := newGuest(t, 5*gib)
	var vm fakeVM
	next, err := g.Register(&vm, 3)
	if err != nil {
		t.Fatal(err)
	}
	if next != 5 || len(vm.slots) != 2 {
		t.Fatalf("Register: next %d, %d slots", next, len(vm.slots))
	}
	for i, r := range g.Regions() {
		s := vm.slots[i]
		if s.GPA != r.GPA || s.Size != r.Size || s.Host != r.Host || s.Offset != uint64(3+i) {
			t.Errorf("slot %d = %+v, region %+v", i, s, r)
		}
	}

	// Splitting above the per-slot maximum: 1 GiB pieces tile each range
	// contiguously, with host address and memfd offset moving in step.
	pieces := g.Slots(gib)
	if len(pieces) != 5 {
		t.Fatalf("Slots(1 GiB) gave %d pieces: %+v", len(pieces), pieces)
	}
	for i, p := range pieces {
		if p.Size != gib {
			t.Errorf("piece %d size %#x", i, p.Size)
		}
		s, err := g.Slice(p.GPA, p.Size)
		if err != nil {
			t.Fatalf("piece %d not RAM: %v", i, err)
		}
		if uintptr(unsafe.Pointer(&s[0])) != p.Host {
			t.Errorf("piece %d host %#x, Slice says %p", i, p.Host, &s[0])
		}
		if i > 0 && pieces[i-1].GPA+gib == p.GPA && pieces[i-1].Offset+gib != p.Offset {
			t.Errorf("piece %d offset %#x does not follow %#x", i, p.Offset, pieces[i-1].Offset)
		}
	}

	bad := fakeVM{fail: 2}
	if _, err := g.Register(&bad, 0); err == nil || !strings.Contains(err.Error(), "slot 1") {
		t.Fatalf("Register with failing VM: %v", err)
	}
}

// FuzzSlice checks that no (gpa, n) makes Slice panic or return bytes
// outside the mapping or outside the requested guest range.
func FuzzSlice(f *testing.F) {
	f.Add(uint64(0), uint64(1))
	f.Add(uint64(3*gib-1), uint64(2))
	f.Add(uint64(4*gib), uint64(0))
	f.Add(^uint64(0), ^uint64(0))
	f.Add(uint64(0x1000), ^uint64(0)-0xfff)
	g := newGuest(f, 3*gib+64*mib)
	base := uintptr(unsafe.Pointer(&g.mem[0]))
	end := base + uintptr(len(g.mem))
	f.Fuzz(func(t *testing.T, gpa, n uint64) {
		s, err := g.Slice(gpa, n)
		if err != nil {
			if s != nil {
				t.Fatal("slice returned with an error")
			}
			return
		}
		if uint64(len(s)) != n || n == 0 {
			t.Fatalf("Slice(%#x, %#x) has len %d", gpa, n, len(s))
		}
		p := uintptr(unsafe.Pointer(&s[0]))
		if p < base || p+uintptr(cap(s)) > end {
			t.Fatalf("Slice(%#x, %#x) escapes the mapping", gpa, n)
		}
		in := false
		for _, r := range g.Regions() {
			if gpa >= r.GPA && gpa-r.GPA < r.Size && n <= r.Size-(gpa-r.GPA) {
				in = p == r.Host+uintptr(gpa-r.GPA)
			}
		}
		if !in {
			t.Fatalf("Slice(%#x, %#x) returned a view of the wrong bytes or outside RAM", gpa, n)
		}
	})
}

func BenchmarkSlice(b *testing.B) {
	g := newGuest(b, 5*gib)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := g.Slice(4*gib+uint64(i&0xff)*64, 64); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadAt(b *testing.B) {
	g := newGuest(b, 64*mib)
	p := make([]byte, 16)
	b.ReportAllocs()
	b.SetBytes(int64(len(p)))
	for i := 0; b.Loop(); i++ {
		if err := g.ReadAt(p, uint64(i&0xfff)*16); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUint32(b *testing.B) {
	g := newGuest(b, 64*mib)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := g.Uint32(uint64(i&0xfff) * 4); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMemfdSealed: the memfd handed to vhost-user backends cannot be
// shrunk (which would make their mappings fault), grown, or unsealed.
func TestMemfdSealed(t *testing.T) {
	g := newGuest(t, 16<<20)
	seals, err := unix.FcntlInt(uintptr(g.Fd()), unix.F_GET_SEALS, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL; seals&want != want {
		t.Errorf("seals %#x, want %#x", seals, want)
	}
	if err := unix.Ftruncate(g.Fd(), 4096); err == nil {
		t.Error("the guest RAM memfd could be shrunk")
	}
	if err := unix.Ftruncate(g.Fd(), 32<<20); err == nil {
		t.Error("the guest RAM memfd could be grown")
	}
}

// TestGuestRAMAsksForHugePages: guest RAM in small pages is madvised for
// transparent huge pages (smaps' VmFlags "hg"): every first touch of a
// guest page is a nested page fault, and 2 MiB pages make far fewer.
func TestGuestRAMAsksForHugePages(t *testing.T) {
	g, err := New(8<<20, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	start := fmt.Sprintf("%x-", g.Regions()[0].Host)
	in := false
	for _, l := range strings.Split(string(smaps), "\n") {
		if strings.HasPrefix(l, start) {
			in = true
		}
		if in && strings.HasPrefix(l, "VmFlags:") {
			if !slices.Contains(strings.Fields(l)[1:], "hg") {
				t.Errorf("guest RAM mapping not madvised for huge pages: %s", l)
			}
			return
		}
	}
	t.Fatalf("no mapping at %s in smaps", start)
}
