package acpi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/acpi/aml"
	"github.com/hyperroot/hyperroot/vmm/layout"
)

var le = binary.LittleEndian

// parsed is the blob read back the way an OS would: from the RSDP.
type parsed struct {
	blob   []byte
	rsdp   []byte
	tables map[string][]byte // by signature, including DSDT
}

// table returns the bytes of the table at guest-physical addr after
// checking that it lies in the blob, its length and its checksum.
func tableAt(blob []byte, addr uint64) ([]byte, error) {
	if addr < layout.ACPIStart || addr+headerLen > layout.ACPIStart+uint64(len(blob)) {
		return nil, fmt.Errorf("table address %#x outside the blob", addr)
	}
	off := addr - layout.ACPIStart
	n := uint64(le.Uint32(blob[off+4:]))
	if n < headerLen || off+n > uint64(len(blob)) {
		return nil, fmt.Errorf("table at %#x: length %d out of bounds", addr, n)
	}
	t := blob[off : off+n]
	if s := sum(t); s != 0 {
		return nil, fmt.Errorf("table %q at %#x: checksum sums to %#x", t[:4], addr, s)
	}
	return t, nil
}

func parse(blob []byte, rsdpOff uint64) (*parsed, error) {
	if rsdpOff%16 != 0 || rsdpOff+36 > uint64(len(blob)) {
		return nil, fmt.Errorf("RSDP offset %d unaligned or out of bounds", rsdpOff)
	}
	r := blob[rsdpOff : rsdpOff+36]
	switch {
	case string(r[:8]) != "RSD PTR ":
		return nil, fmt.Errorf("RSDP signature %q", r[:8])
	case sum(r[:20]) != 0:
		return nil, errors.New("RSDP v1 checksum")
	case sum(r) != 0:
		return nil, errors.New("RSDP extended checksum")
	case r[15] != 2 || le.Uint32(r[20:]) != 36:
		return nil, fmt.Errorf("RSDP revision %d length %d", r[15], le.Uint32(r[20:]))
	}
	p := &parsed{blob: blob, rsdp: r, tables: map[string][]byte{}}
	x, err := tableAt(blob, le.Uint64(r[24:]))
	if err != nil {
		return nil, fmt.Errorf("XSDT: %w", err)
	}
	if string(x[:4]) != "XSDT" || (len(x)-headerLen)%8 != 0 {
		return nil, fmt.Errorf("XSDT signature %q, length %d", x[:4], len(x))
	}
	p.tables["XSDT"] = x
	for i := headerLen; i < len(x); i += 8 {
		t, err := tableAt(blob, le.Uint64(x[i:]))
		if err != nil {
			return nil, fmt.Errorf("XSDT entry %d: %w", (i-headerLen)/8, err)
		}
		sig := string(t[:4])
		if _, dup := p.tables[sig]; dup {
			return nil, fmt.Errorf("table %s listed twice", sig)
		}
		p.tables[sig] = t
	}
	f, ok := p.tables["FACP"]
	if !ok {
		return nil, errors.New("no FADT in XSDT")
	}
	if len(f) != fadtLen {
		return nil, fmt.Errorf("FADT is %d bytes", len(f))
	}
	d, err := tableAt(blob, le.Uint64(f[fadtXDSDT:]))
	if err != nil {
		return nil, fmt.Errorf("X_DSDT: %w", err)
	}
	if string(d[:4]) != "DSDT" {
		return nil, fmt.Errorf("X_DSDT points at %q", d[:4])
	}
	p.tables["DSDT"] = d
	return p, nil
}

func build(t *testing.T, cfg Config) *parsed {
	t.Helper()
	blob, off, err := Build(cfg)
	if err != nil {
		t.Fatalf("Build(%+v): %v", cfg, err)
	}
	if len(blob) > MaxSize {
		t.Fatalf("blob is %d bytes", len(blob))
	}
	p, err := parse(blob, off)
	if err != nil {
		t.Fatalf("CPUs=%d: %v", cfg.CPUs, err)
	}
	return p
}

func TestTablesParse(t *testing.T) {
	for _, mcfg := range []bool{false, true} {
		p := build(t, Config{CPUs: 2, MCFG: mcfg})
		want := []string{"XSDT", "FACP", "APIC", "DSDT"}
		if mcfg {
			want = append(want, "MCFG")
		}
		if len(p.tables) != len(want) {
			t.Errorf("MCFG=%v: tables %v, want %v", mcfg, keys(p.tables), want)
		}
		for _, s := range want {
			if _, ok := p.tables[s]; !ok {
				t.Errorf("MCFG=%v: no %s table", mcfg, s)
			}
		}
		for sig, tb := range p.tables {
			if string(tb[10:16]) != oemID {
				t.Errorf("%s OEM id %q", sig, tb[10:16])
			}
		}
	}
}

func keys(m map[string][]byte) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	return k
}

// TestLegacyScan finds the RSDP the way Linux does without boot_params:
// a 16-byte-aligned scan of 0xE0000-0xFFFFF.
func TestLegacyScan(t *testing.T) {
	blob, off, err := Build(Config{CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	found := -1
	for i := 0; i+36 <= len(blob) && layout.ACPIStart+i < 0x100000; i += 16 {
		if string(blob[i:i+8]) == "RSD PTR " && sum(blob[i:i+20]) == 0 {
			found = i
			break
		}
	}
	if found < 0 || uint64(found) != off {
		t.Fatalf("scan found RSDP at %d, Build says %d", found, off)
	}
}

func gasOK(g []byte, port uint16) bool {
	return g[0] == gasSystemIO && g[1] == 8 && g[2] == 0 && g[3] == gasByte && le.Uint64(g[4:]) == uint64(port)
}

func TestFADT(t *testing.T) {
	f := build(t, Config{CPUs: 1}).tables["FACP"]
	if f[8] != 6 {
		t.Errorf("revision %d", f[8])
	}
	flags := le.Uint32(f[fadtFlags:])
	for name, bit := range map[string]uint32{"HW_REDUCED_ACPI": 1 << 20, "RESET_REG_SUP": 1 << 10} {
		if flags&bit == 0 {
			t.Errorf("flag %s clear (flags %#x)", name, flags)
		}
	}
	arch := le.Uint16(f[fadtIAPCBootArch:])
	if arch&(1<<1) == 0 || arch&(1<<2) == 0 || arch&(1<<5) != 0 {
		t.Errorf("IAPC_BOOT_ARCH %#x: want 8042 and no-VGA set, CMOS-RTC-absent clear", arch)
	}
	if !gasOK(f[fadtResetReg:], layout.ResetPort) || f[fadtResetValue] != 6 {
		t.Errorf("reset register % x value %#x", f[fadtResetReg:fadtResetReg+12], f[fadtResetValue])
	}
	if !gasOK(f[fadtSleepControl:], layout.SleepCtlPort) || !gasOK(f[fadtSleepStatus:], layout.SleepStsPort) {
		t.Errorf("sleep registers % x / % x", f[fadtSleepControl:fadtSleepControl+12], f[fadtSleepStatus:fadtSleepStatus+12])
	}
	if le.Uint32(f[40:]) != 0 || le.Uint32(f[36:]) != 0 || le.Uint64(f[132:]) != 0 {
		t.Errorf("32-bit DSDT or FACS pointers set: ACPICA warns on mismatches and reduced hardware has no FACS")
	}
	if string(f[fadtHypervisorID:fadtHypervisorID+7]) != "HYPERRT" {
		t.Errorf("hypervisor id %q", f[fadtHypervisorID:])
	}
	if sci := le.Uint16(f[fadtSCIInt:]); sci == 0 {
		t.Errorf("SCI_INT 0 collides with the IRQ0 override")
	}
}

type madtInfo struct {
	lapicAddr, flags uint32
	apicIDs          map[uint32]int // id -> entry type
	uids             map[uint32]bool
	ioapics          int
	overrides        [][3]uint32 // source, gsi, flags
	nmi4, nmiA       int
}

func parseMADT(t *testing.T, m []byte) madtInfo {
	t.Helper()
	info := madtInfo{
		lapicAddr: le.Uint32(m[36:]), flags: le.Uint32(m[40:]),
		apicIDs: map[uint32]int{}, uids: map[uint32]bool{},
	}
	for i := headerLen + 8; i < len(m); {
		if i+2 > len(m) || m[i+1] < 2 || i+int(m[i+1]) > len(m) {
			t.Fatalf("MADT entry at %d overruns the table", i)
		}
		e := m[i : i+int(m[i+1])]
		wantLen := map[byte]int{0: 8, 1: 12, 2: 10, 4: 6, 9: 16, 0xA: 12}[e[0]]
		if wantLen == 0 || len(e) != wantLen {
			t.Fatalf("MADT entry type %d length %d", e[0], len(e))
		}
		var id, uid, flags uint32
		switch e[0] {
		case madtLocalAPIC:
			uid, id, flags = uint32(e[2]), uint32(e[3]), le.Uint32(e[4:])
			if id == 0xFF {
				t.Errorf("xAPIC entry with broadcast ID 0xFF")
			}
		case madtLocalX2APIC:
			id, flags, uid = le.Uint32(e[4:]), le.Uint32(e[8:]), le.Uint32(e[12:])
			if id < 255 {
				t.Errorf("x2APIC entry for ID %d < 255", id)
			}
		case madtIOAPIC:
			info.ioapics++
			if le.Uint32(e[4:]) != layout.IOAPICAddr || le.Uint32(e[8:]) != 0 {
				t.Errorf("IOAPIC entry % x", e)
			}
			i += len(e)
			continue
		case madtIntOverride:
			info.overrides = append(info.overrides, [3]uint32{uint32(e[3]), le.Uint32(e[4:]), uint32(le.Uint16(e[8:]))})
			i += len(e)
			continue
		case madtLocalAPICNMI:
			if e[2] != 0xFF || e[5] != 1 {
				t.Errorf("LAPIC NMI % x: want all processors, LINT1", e)
			}
			info.nmi4++
			i += len(e)
			continue
		case madtLocalX2APICNMI:
			if le.Uint32(e[4:]) != 0xFFFFFFFF || e[8] != 1 {
				t.Errorf("x2APIC NMI % x: want all processors, LINT1", e)
			}
			info.nmiA++
			i += len(e)
			continue
		}
		if flags&lapicEnabled == 0 {
			t.Errorf("processor %d not enabled", id)
		}
		if _, dup := info.apicIDs[id]; dup {
			t.Errorf("APIC ID %d listed twice", id)
		}
		if info.uids[uid] {
			t.Errorf("processor UID %d listed twice", uid)
		}
		info.apicIDs[id] = int(e[0])
		info.uids[uid] = true
		i += len(e)
	}
	return info
}

func TestMADT(t *testing.T) {
	for _, n := range []int{1, 2, 64, 254, 255, 256, 300, 1024} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			info := parseMADT(t, build(t, Config{CPUs: n}).tables["APIC"])
			if info.lapicAddr != layout.LAPICAddr || info.flags&1 == 0 {
				t.Errorf("local APIC address %#x flags %#x", info.lapicAddr, info.flags)
			}
			if len(info.apicIDs) != n {
				t.Fatalf("%d processor entries, want %d", len(info.apicIDs), n)
			}
			for i := 0; i < n; i++ {
				typ, ok := info.apicIDs[uint32(i)]
				want := madtLocalAPIC
				if i >= 255 {
					want = madtLocalX2APIC
				}
				if !ok || typ != want {
					t.Fatalf("APIC ID %d: entry type %d (present %v), want %d", i, typ, ok, want)
				}
			}
			if info.ioapics != 1 {
				t.Errorf("%d IOAPICs", info.ioapics)
			}
			if len(info.overrides) != 1 || info.overrides[0] != [3]uint32{0, 2, 0b0101} {
				t.Errorf("overrides %v, want IRQ0 -> GSI2 edge/high", info.overrides)
			}
			wantA := 0
			if n > 255 {
				wantA = 1
			}
			if info.nmi4 != 1 || info.nmiA != wantA {
				t.Errorf("NMI entries: %d type 4, %d type 0xA; want 1, %d", info.nmi4, info.nmiA, wantA)
			}
		})
	}
}

func TestMCFG(t *testing.T) {
	m := build(t, Config{CPUs: 1, MCFG: true}).tables["MCFG"]
	if len(m) != headerLen+8+16 {
		t.Fatalf("MCFG is %d bytes", len(m))
	}
	a := m[headerLen+8:]
	if le.Uint64(a) != layout.ECAMStart || le.Uint16(a[8:]) != 0 || a[10] != 0 || a[11] != layout.PCILastBus {
		t.Errorf("allocation % x", a)
	}
}

// TestDSDTContents looks for the encodings of the objects Linux needs; the
// iasl test checks the AML as a whole.
func TestDSDTContents(t *testing.T) {
	d := build(t, Config{CPUs: 1}).tables["DSDT"]
	if d[8] < 2 {
		t.Errorf("DSDT revision %d: integers would be 32-bit", d[8])
	}
	s5, err := aml.Encode(aml.Name(`\_S5_`, aml.Package(
		aml.Int(layout.PowerOffSlpTy), aml.Int(layout.PowerOffSlpTy), aml.Int(0), aml.Int(0))))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{"_S5": s5}
	for _, id := range []string{"PNP0501", "PNP0303", "PNP0B00", "PNP0C0C"} {
		b, err := aml.Encode(aml.EISAID(id))
		if err != nil {
			t.Fatal(err)
		}
		want[id] = b
	}
	want["ACPI0013"] = []byte("ACPI0013\x00")
	gedReg, err := aml.Encode(aml.OperationRegion("GDST", aml.SystemMemory, layout.GEDAddr, layout.GEDSize))
	if err != nil {
		t.Fatal(err)
	}
	want["GED region"] = gedReg
	for name, b := range want {
		if !bytes.Contains(d[headerLen:], b) {
			t.Errorf("DSDT lacks %s (% x)", name, b)
		}
	}
}

func TestBuildErrors(t *testing.T) {
	for _, n := range []int{0, -1, MaxSize, 1 << 40} {
		if _, _, err := Build(Config{CPUs: n}); err == nil {
			t.Errorf("Build with %d CPUs succeeded", n)
		}
	}
	// Between the quick bound and the real limit, the size check decides.
	if _, _, err := Build(Config{CPUs: 9000}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("9000 CPUs: err = %v, want ErrTooLarge", err)
	}
	if _, _, err := Build(Config{CPUs: 1, Devices: []aml.Term{aml.Device("bad!")}}); err == nil {
		t.Error("bad device name accepted")
	}
}

// TestCapacity documents how many vCPUs fit: comfortably past KVM's limit.
func TestCapacity(t *testing.T) {
	blob, _, err := Build(Config{CPUs: 4096, MCFG: true})
	if err != nil {
		t.Fatalf("4096 vCPUs: %v", err)
	}
	t.Logf("4096 vCPUs: %d of %d bytes", len(blob), MaxSize)
}

func BenchmarkBuild(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Build(Config{CPUs: 64, MCFG: true}); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzBuild checks that any configuration either fails cleanly or yields
// tables that parse, with one processor entry per vCPU.
func FuzzBuild(f *testing.F) {
	f.Add(1, false)
	f.Add(255, true)
	f.Add(300, false)
	f.Add(-5, true)
	f.Fuzz(func(t *testing.T, cpus int, mcfg bool) {
		if cpus > 20000 {
			cpus = 20000 + cpus%1000 // keep iterations fast; the quick bound covers larger
		}
		blob, off, err := Build(Config{CPUs: cpus, MCFG: mcfg})
		if err != nil {
			return
		}
		p, err := parse(blob, off)
		if err != nil {
			t.Fatalf("CPUs=%d: %v", cpus, err)
		}
		if got := len(parseMADT(t, p.tables["APIC"]).apicIDs); got != cpus {
			t.Fatalf("CPUs=%d: %d processor entries", cpus, got)
		}
	})
}
