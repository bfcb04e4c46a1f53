package pci

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/vmm/acpi"
	"github.com/hyperroot/hyperroot/vmm/acpi/aml"
)

// tables builds the machine's ACPI tables with the host bridge and
// returns them by signature (tables are 16-byte aligned in the blob).
func tables(t *testing.T, b *Bus) map[string][]byte {
	t.Helper()
	blob, _, err := acpi.Build(acpi.Config{CPUs: 2, MCFG: true, Devices: []aml.Term{b.AML()}})
	if err != nil {
		t.Fatal(err)
	}
	found := map[string][]byte{}
	for off := 0; off+8 <= len(blob); off += 16 {
		sig := string(blob[off : off+4])
		n := int(le.Uint32(blob[off+4:]))
		if (sig == "DSDT" || sig == "MCFG") && n >= 36 && off+n <= len(blob) {
			found[sig] = blob[off : off+n]
		}
	}
	if found["DSDT"] == nil || found["MCFG"] == nil {
		t.Fatalf("DSDT or MCFG missing from the tables")
	}
	return found
}

// normalize drops iasl's comments and collapses white space, so that
// expectations do not depend on its indentation.
func normalize(dsl string) string {
	dsl = regexp.MustCompile(`(?s)/\*.*?\*/|//[^\n]*`).ReplaceAllString(dsl, "")
	return strings.NewReplacer("( ", "(", " )", ")").Replace(strings.Join(strings.Fields(dsl), " "))
}

var iaslCounts = regexp.MustCompile(`(\d+) Errors?, (\d+) Warnings?, (\d+) Remarks?`)

func TestHostBridgeIASL(t *testing.T) {
	iasl := testenv.NeedTool(t, "iasl", "acpica-tools")
	b, _ := newBus(t)
	base64, size64 := MMIO64Window(4 << 30)
	b.opts.MMIO64Base, b.opts.MMIO64Size = base64, size64
	dir := t.TempDir()
	dsl := map[string]string{}
	for sig, tb := range tables(t, b) {
		if err := os.WriteFile(filepath.Join(dir, sig+".dat"), tb, 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(iasl, "-d", sig+".dat")
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("iasl -d %s: %v\n%s", sig, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			l := strings.ToLower(line)
			if m := iaslCounts.FindStringSubmatch(line); m != nil && (m[1] != "0" || m[2] != "0") ||
				m == nil && (strings.Contains(l, "error") || strings.Contains(l, "warning")) {
				t.Errorf("iasl -d %s: %s", sig, line)
			}
		}
		s, err := os.ReadFile(filepath.Join(dir, sig+".dsl"))
		if err != nil {
			t.Fatal(err)
		}
		dsl[sig] = string(s)
		if strings.Contains(dsl[sig], "****") {
			t.Errorf("iasl flags a problem in %s:\n%s", sig, s)
		}
	}
	d := normalize(dsl["DSDT"])
	want := []string{
		`Device (PCI0) {`,
		`Name (_HID, EisaId ("PNP0A08"))`,
		`Name (_CID, EisaId ("PNP0A03"))`,
		`Name (_SEG, Zero)`, `Name (_BBN, Zero)`, `Name (_UID, Zero)`,
		`WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0x0000, 0x0000, 0x0000, 0x0000, 0x0001,`,
		`IO (Decode16, 0x0CF8, 0x0CF8, 0x01, 0x08,)`,
		`WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0x0000, 0x0000, 0x0CF7, 0x0000, 0x0CF8,`,
		`WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0x0000, 0x0D00, 0xFFFF, 0x0000, 0xF300,`,
		`DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, 0x00000000, 0xC0000000, 0xDFFFFFFF, 0x00000000, 0x20000000,`,
		fmt.Sprintf("QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadWrite, 0x0000000000000000, 0x%016X, 0x%016X, 0x0000000000000000, 0x%016X,",
			base64, base64+size64-1, size64),
		// The _PRT agrees with INTxGSI, slot 1 INTA# first, slot 31 INTD# last.
		fmt.Sprintf("Name (_PRT, Package (0x7C) { Package (0x04) { 0x0001FFFF, Zero, Zero, 0x%02X }, Package (0x04) { 0x0001FFFF, One, Zero, 0x%02X },",
			INTxGSI(1, 1), INTxGSI(1, 2)),
		fmt.Sprintf("Package (0x04) { 0x001FFFFF, 0x03, Zero, 0x%02X } })", INTxGSI(31, 4)),
		`Name (_HID, EisaId ("PNP0C02"))`, // ECAM reserved as a motherboard resource
		`Memory32Fixed (ReadWrite, 0xE0000000, 0x10000000,)`,
	}
	for _, w := range want {
		if !strings.Contains(d, w) {
			t.Errorf("DSDT disassembly lacks %q", w)
		}
	}
	if t.Failed() {
		t.Logf("DSDT:\n%s", d)
	}
	if !strings.Contains(dsl["MCFG"], "Base Address : 00000000E0000000") ||
		!strings.Contains(dsl["MCFG"], "End Bus Number : 00") {
		t.Errorf("MCFG disassembly:\n%s", dsl["MCFG"])
	}
}

func TestINTxGSI(t *testing.T) {
	seen := map[uint32]int{}
	for s := 0; s < Slots; s++ {
		for pin := 1; pin <= 4; pin++ {
			g := INTxGSI(s, pin)
			if g < 16 || g > 23 {
				t.Fatalf("INTxGSI(%d, %d) = %d, outside the IOAPIC's PCI pins 16-23", s, pin, g)
			}
			seen[g]++
		}
		if s > 0 && INTxGSI(s, 1) == INTxGSI(s-1, 1) {
			t.Errorf("slots %d and %d share INTA#", s-1, s)
		}
	}
	if len(seen) != 8 {
		t.Errorf("INTx uses %d GSIs, want all 8", len(seen))
	}
}
