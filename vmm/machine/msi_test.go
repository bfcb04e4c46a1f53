package machine

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/kvm"
)

// fakeChip is the VM as MSI routing sees it, checking what KVM checks:
// with x2APIC-format routes (KVM_CAP_X2APIC_API) an MSI route whose
// address_hi has its low byte set is EINVAL (kvm_msi_route_invalid), and
// an irqfd is attached at most once and detached only when attached.
type fakeChip struct {
	x2apic   bool
	table    map[uint32]kvm.MSI // the MSI routes KVM holds
	legacy   int                // legacy routes in the last table
	attached map[int]uint32     // irqfd -> GSI
	sets     int
}

func newFakeChip(x2apic bool) *fakeChip {
	return &fakeChip{x2apic: x2apic, table: map[uint32]kvm.MSI{}, attached: map[int]uint32{}}
}

var errInval = errors.New("EINVAL")

func (c *fakeChip) SetGSIRouting(rs []kvm.Route) error {
	if len(rs) > 4096 {
		return errInval
	}
	table := map[uint32]kvm.MSI{}
	legacy := 0
	for _, r := range rs {
		switch {
		case r.GSI >= 4096:
			return errInval
		case r.Type == kvm.RouteMSI:
			if c.x2apic && r.MSI.Addr>>32&0xff != 0 {
				return errInval
			}
			if _, dup := table[r.GSI]; dup {
				return errInval
			}
			table[r.GSI] = r.MSI
		default:
			legacy++
		}
	}
	c.table, c.legacy = table, legacy
	c.sets++
	return nil
}

func (c *fakeChip) IRQFD(fd int, gsi uint32, _ int, deassign bool) error {
	g, ok := c.attached[fd]
	switch {
	case deassign && (!ok || g != gsi):
		return errors.New("ENOENT")
	case deassign:
		delete(c.attached, fd)
	case ok:
		return errors.New("EBUSY")
	default:
		c.attached[fd] = gsi
	}
	return nil
}

// TestMSIRouteRefused: a message KVM refuses fails that vector's Route
// and nothing else: the next vector (of any device) is routed, and the
// table KVM holds never carries the refused message.
func TestMSIRouteRefused(t *testing.T) {
	chip := newFakeChip(true)
	routes := newGSIRoutes(chip)
	r1 := &msiRouter{routes: routes, vm: chip, max: 3}
	r2 := &msiRouter{routes: routes, vm: chip, max: 2}
	defer r1.close()
	defer r2.close()
	for _, s := range []struct {
		r      *msiRouter
		v      int
		addr   uint64
		masked bool
		ok     bool
	}{
		{r1, 0, 0xFEE0_0000, false, true},
		{r1, 1, 0x1_FEE0_0000, false, false}, // address_hi 1: refused
		{r1, 2, 0xFEE0_1000, false, true},
		{r2, 0, 0xFEE0_2000, false, true},
		{r1, 1, 0xFEE0_3000, false, true}, // reprogrammed properly
		{r1, 0, 0x2_FEE0_0000, false, false},
		{r2, 1, 0xFEE0_4000, false, true},
		{r1, 3, 0xFEE0_0000, false, false}, // beyond r1's 3 vectors
		{r2, -1, 0xFEE0_0000, false, false},
	} {
		err := s.r.Route(s.v, s.addr, 0x30, s.masked)
		if (err == nil) != s.ok {
			t.Fatalf("Route(%d, %#x) = %v, want ok=%v", s.v, s.addr, err, s.ok)
		}
		for gsi, m := range chip.table {
			if m.Addr>>32 != 0 {
				t.Fatalf("GSI %d holds the refused message %#x", gsi, m.Addr)
			}
		}
	}
	if len(chip.table) != 5 {
		t.Errorf("%d MSI routes, want 5: %v", len(chip.table), chip.table)
	}
	if len(r1.vectors) > 3 || len(r2.vectors) > 2 {
		t.Errorf("vectors made beyond the devices' MSI-X: %d and %d", len(r1.vectors), len(r2.vectors))
	}
}

// FuzzMSIRouting programs two devices' MSI-X vectors with whatever a guest
// can write (any vector number, address, data, mask) through their routers
// sharing one GSI table, over a chip that refuses some messages, and
// checks after every step: no panic; nothing is allocated for a vector
// the device does not have; GSIs are distinct and never a legacy pin's;
// the table KVM holds routes exactly the vectors that were accepted, with
// the message last accepted; an irqfd is attached exactly while its vector
// is unmasked and routed.
// Each step is 14 bytes: kind, vector, 8 bytes address, 4 bytes data.
func FuzzMSIRouting(f *testing.F) {
	step := func(kind byte, v int8, addr uint64, data uint32) []byte {
		b := []byte{kind, byte(v)}
		b = binary.LittleEndian.AppendUint64(b, addr)
		return binary.LittleEndian.AppendUint32(b, data)
	}
	cat := func(s ...[]byte) (out []byte) {
		for _, b := range s {
			out = append(out, b...)
		}
		return out
	}
	f.Add(cat(step(0, 0, 0xFEE0_0000, 0x30), step(2, 0, 0, 0), step(1, 0, 0, 0)))
	f.Add(cat(step(0, 1, 0x1_FEE0_0000, 0x31), step(0, 1, 0xFEE0_0000, 0x31), step(4, 1, 0xFEE0_0000, 0x31)))
	f.Add(cat(step(3, 0, 0xFEE0_0000, 0x41), step(0, 2, 0xFEE0_0000, 0x32), step(6, 5, 0, 0), step(0, -1, 0, 0)))
	f.Add(cat(step(0, 0, 0xFEE0_0000, 0x30), step(4, 0, 0xFEE0_0000, 0x30), step(0, 0, 0xFEE0_1000, 0x30), step(8, 0, 0, 0)))
	f.Fuzz(func(t *testing.T, in []byte) {
		chip := newFakeChip(true)
		routes := newGSIRoutes(chip)
		rs := []*msiRouter{{routes: routes, vm: chip, max: 3}, {routes: routes, vm: chip, max: 2}}
		defer func() {
			for _, r := range rs {
				if err := r.close(); err != nil {
					t.Error(err)
				}
			}
		}()
		type want struct {
			msg            kvm.MSI
			routed, masked bool
		}
		model := [2][3]want{}
		for i := range model {
			for v := range model[i] {
				model[i][v].masked = true
			}
		}
		for ; len(in) >= 14; in = in[14:] {
			kind, v := in[0], int(int8(in[1]))
			addr := binary.LittleEndian.Uint64(in[2:])
			data := binary.LittleEndian.Uint32(in[10:])
			ri := int(kind>>4) % 2
			r := rs[ri]
			inRange := v >= 0 && v < r.max
			var err error
			switch kind % 4 {
			case 0, 3: // unmask with a message
				err = r.Route(v, addr, data, false)
				if err == nil {
					model[ri][v] = want{msg: kvm.MSI{Addr: addr, Data: data}, routed: true}
				}
			case 1: // mask
				err = r.Route(v, addr, data, true)
				if err == nil {
					model[ri][v].masked = true
				}
			case 2:
				err = r.Signal(v)
			}
			if !inRange && err == nil {
				t.Fatalf("router %d: vector %d of %d accepted", ri, v, r.max)
			}
			if inRange && kind%4 != 0 && kind%4 != 3 && err != nil {
				t.Fatalf("router %d: vector %d: %v", ri, v, err)
			}
			// The table and the irqfds against the model.
			gsis := map[uint32]bool{}
			routed := 0
			for i, r := range rs {
				if len(r.vectors) > r.max {
					t.Fatalf("router %d: %d vectors made, the device has %d", i, len(r.vectors), r.max)
				}
				for v, vec := range r.vectors {
					if vec == nil {
						continue
					}
					if vec.gsi < firstMSIGSI || gsis[vec.gsi] {
						t.Fatalf("router %d vector %d: GSI %d reused or legacy", i, v, vec.gsi)
					}
					gsis[vec.gsi] = true
					w := model[i][v]
					msg, inTable := chip.table[vec.gsi]
					if inTable != w.routed || (w.routed && msg != w.msg) {
						t.Fatalf("router %d vector %d: KVM routes %v %+v, want %v %+v", i, v, inTable, msg, w.routed, w.msg)
					}
					if inTable {
						routed++
					}
					g, att := chip.attached[vec.fd]
					if att != !w.masked || (att && g != vec.gsi) {
						t.Fatalf("router %d vector %d: irqfd attached=%v to %d, want %v to %d", i, v, att, g, !w.masked, vec.gsi)
					}
				}
			}
			if len(chip.table) != routed {
				t.Fatalf("KVM holds %d MSI routes, %d vectors are routed", len(chip.table), routed)
			}
			if chip.sets > 0 && chip.legacy != len(legacyRoutes()) {
				t.Fatalf("%d legacy routes in the table, want %d", chip.legacy, len(legacyRoutes()))
			}
		}
	})
}

// TestMSIExtDestID: with x2APIC ids, an MSI for APIC id 1023 as a guest
// without interrupt remapping writes it (id bits 8-14 in address bits
// 5-11) reaches KVM with those bits in the upper address, where KVM's
// 32-bit destinations take them; without, the address is passed as is.
func TestMSIExtDestID(t *testing.T) {
	const id = 1023
	guest := uint64(0xFEE0_0000 | (id&0xff)<<12 | (id>>8)<<5)
	for _, ext := range []bool{true, false} {
		chip := newFakeChip(ext)
		routes := newGSIRoutes(chip)
		routes.extDestID = ext
		r := &msiRouter{routes: routes, vm: chip, max: 2}
		if err := r.Route(0, guest, 0x41, false); err != nil {
			t.Fatalf("ext=%v: %v", ext, err)
		}
		// An address with its upper half set is KVM's to judge: left.
		if err := r.Route(1, 0x1_FEE0_0000|3<<5, 0x42, false); err == nil && ext {
			t.Errorf("ext=%v: an address_hi of 1 was routed", ext)
		}
		got := chip.table[r.vectors[0].gsi].Addr
		want := guest
		if ext {
			want = 0xFEE0_0000 | (id&0xff)<<12 | uint64(id>>8)<<40
			if dest := got>>12&0xff | got>>32>>8<<8; dest != id {
				t.Errorf("KVM would deliver to APIC id %d, want %d", dest, id)
			}
		}
		if got != want {
			t.Errorf("ext=%v: route address %#x, want %#x", ext, got, want)
		}
		r.close()
	}
}

func TestGuestCmdline(t *testing.T) {
	for _, tc := range []struct {
		in     string
		x2apic bool
		want   string
	}{
		{"console=ttyS0", false, "console=ttyS0"},
		{"console=ttyS0", true, "console=ttyS0 irqaffinity=0-254"},
		{"", true, "irqaffinity=0-254"},
		{"console=ttyS0 irqaffinity=3", true, "console=ttyS0 irqaffinity=3"},
	} {
		if got := guestCmdline(tc.in, tc.x2apic); got != tc.want {
			t.Errorf("guestCmdline(%q, %v) = %q, want %q", tc.in, tc.x2apic, got, tc.want)
		}
	}
}
