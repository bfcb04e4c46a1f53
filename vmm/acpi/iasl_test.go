package acpi

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/vmm/acpi/aml"
)

// hostBridge is a PCI host bridge of the shape a later PCI package will
// add, so that iasl also checks the Word/DWord/QWord window descriptors and
// method control flow.
func hostBridge() aml.Term {
	return aml.Device("PCI0",
		aml.Name("_HID", aml.EISAID("PNP0A08")),
		aml.Name("_CID", aml.EISAID("PNP0A03")),
		aml.Name("_SEG", aml.Int(0)),
		aml.Name("_BBN", aml.Int(0)),
		aml.Name("_UID", aml.Int(0)),
		aml.Name("_CRS", aml.ResourceTemplate(
			aml.WordBusNumber(0, 0xFF),
			aml.IO(0xCF8, 0xCF8, 1, 8),
			aml.WordIO(0, 0xCF7),
			aml.WordIO(0xD00, 0xFFFF),
			aml.DWordMemory(0xC000_0000, 0xDFFF_FFFF, aml.NonCacheable),
			aml.QWordMemory(1<<36, 1<<37-1, aml.Prefetchable),
		)),
		aml.Method("_STA", 0, false, aml.Return(aml.Int(0xF))),
		aml.Method("TST_", 1, false,
			aml.If(aml.LEqual(aml.Arg(0), aml.Int(1)), aml.Return(aml.Int(2))),
			aml.Else(aml.Return(aml.Buffer([]byte{1, 2, 3}))),
		),
		aml.Name("PKG_", aml.Package(aml.String("hyperroot"), aml.Int(1<<40), aml.Path(`\_SB_.PCI0`))),
	)
}

// fillers are enough devices to push \_SB past 4096 bytes, so its
// PkgLength needs 3 bytes.
func fillers(n int) []aml.Term {
	var t []aml.Term
	for i := 0; i < n; i++ {
		t = append(t, aml.Device(fmt.Sprintf("D%03X", i),
			aml.Name("_ADR", aml.Int(uint64(i)<<16)),
			aml.Name("_UID", aml.Int(uint64(i))),
		))
	}
	return t
}

var iaslCounts = regexp.MustCompile(`(\d+) Errors?, (\d+) Warnings?`)

// runIASL runs iasl in dir and fails on a failed exit, any reported error
// or warning, and any line that mentions one.
func runIASL(t *testing.T, iasl, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(iasl, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	s := string(out)
	if err != nil {
		t.Fatalf("iasl %v: %v\n%s", args, err, s)
	}
	for _, line := range strings.Split(s, "\n") {
		if m := iaslCounts.FindStringSubmatch(line); m != nil {
			if m[1] != "0" || m[2] != "0" {
				t.Errorf("iasl %v: %s", args, line)
			}
			continue
		}
		l := strings.ToLower(line)
		if strings.Contains(l, "error") || strings.Contains(l, "warning") || strings.Contains(l, "not contain a valid") {
			t.Errorf("iasl %v: %s", args, line)
		}
	}
	return s
}

func TestIASL(t *testing.T) {
	iasl := testenv.NeedTool(t, "iasl", "acpica-tools")
	tests := []struct {
		name string
		cfg  Config
	}{
		{"minimal", Config{CPUs: 1}},
		{"x2apic+pci", Config{CPUs: 300, MCFG: true, Devices: append([]aml.Term{hostBridge()}, fillers(200)...)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := build(t, tt.cfg)
			dir := t.TempDir()
			for sig, tb := range p.tables {
				if err := os.WriteFile(filepath.Join(dir, sig+".dat"), tb, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			dsl := map[string]string{}
			for sig, tb := range p.tables {
				runIASL(t, iasl, dir, "-d", sig+".dat")
				b, err := os.ReadFile(filepath.Join(dir, sig+".dsl"))
				if err != nil {
					t.Fatalf("disassembly of %s: %v", sig, err)
				}
				dsl[sig] = string(b)
				// iasl marks bytes it cannot decode with "****" comments.
				if strings.Contains(dsl[sig], "****") {
					t.Errorf("%s disassembly flags a problem:\n%s", sig, dsl[sig])
				}

				// Compile the disassembly back without optimisations: the
				// result must be our table again, except for the compiler id
				// (iasl writes its own) and hence the checksum.
				runIASL(t, iasl, dir, "-oa", "-p", "re_"+sig, sig+".dsl")
				re, err := os.ReadFile(filepath.Join(dir, "re_"+sig+".aml"))
				if err != nil {
					t.Fatalf("recompiled %s: %v", sig, err)
				}
				if len(re) != len(tb) || !bytes.Equal(re[:9], tb[:9]) ||
					!bytes.Equal(re[10:28], tb[10:28]) || !bytes.Equal(re[headerLen:], tb[headerLen:]) {
					t.Errorf("%s: iasl recompiles its disassembly to different bytes:\n ours % x\niasl's % x", sig, tb, re)
				}
			}

			for _, want := range []string{
				`Name (\_S5, Package (0x04)`,
				`EisaId ("PNP0501")`, `IO (Decode16,
                    0x03F8,`, `{4}`,
				`EisaId ("PNP0303")`, `EisaId ("PNP0B00")`, `EisaId ("PNP0C0C")`,
				`Name (_HID, "ACPI0013"`,
				`Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, )`,
				`OperationRegion (GDST, SystemMemory, 0xFED00000, 0x10)`,
				`Field (GDST, DWordAcc, NoLock, WriteAsZeros)`,
				`Method (_EVT, 1, Serialized)`,
				`Notify (\_SB.PWRB, 0x80)`,
			} {
				if !strings.Contains(dsl["DSDT"], want) {
					t.Errorf("DSDT disassembly lacks %q", want)
				}
			}
			for _, want := range []string{
				"Hardware Reduced (V5) : 1", "Reset Register Supported (V2) : 1",
				"8042 Present on ports 60/64 (V2) : 1", "CMOS RTC Not Present (V5) : 0",
				"Value to cause reset : 06", "Address : 0000000000000600", "Address : 0000000000000601",
			} {
				if !strings.Contains(dsl["FACP"], want) {
					t.Errorf("FADT disassembly lacks %q", want)
				}
			}
			xapic := min(tt.cfg.CPUs, 255)
			if got := strings.Count(dsl["APIC"], "Subtable Type : 00 [Processor Local APIC]"); got != xapic {
				t.Errorf("iasl sees %d local APIC entries, want %d", got, xapic)
			}
			if got := strings.Count(dsl["APIC"], "Subtable Type : 09 [Processor Local x2APIC]"); got != tt.cfg.CPUs-xapic {
				t.Errorf("iasl sees %d local x2APIC entries, want %d", got, tt.cfg.CPUs-xapic)
			}
			if tt.cfg.MCFG && !strings.Contains(dsl["MCFG"], "Base Address : 00000000E0000000") {
				t.Errorf("MCFG disassembly lacks the ECAM base:\n%s", dsl["MCFG"])
			}
			if len(tt.cfg.Devices) > 0 {
				for _, want := range []string{"WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,",
					"DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,",
					"QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Prefetchable, ReadWrite,",
					"WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,",
					"Device (D0C7)"} {
					if !strings.Contains(dsl["DSDT"], want) {
						t.Errorf("DSDT disassembly lacks %q", want)
					}
				}
			}
		})
	}
}
