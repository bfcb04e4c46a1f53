package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/layout"
)

func TestParseBzImageGood(t *testing.T) {
	img := synthImage(nil)
	k, err := ParseBzImage(img)
	if err != nil {
		t.Fatal(err)
	}
	setupLen := (synthSetupSects + 1) * 512
	checks := []struct {
		name      string
		got, want any
	}{
		{"Protocol", k.Protocol, uint16(0x020F)},
		{"ProtocolString", k.ProtocolString(), "2.15"},
		{"KernelVersion", k.KernelVersion, synthRelease},
		{"SetupSects", k.SetupSects, synthSetupSects},
		{"Relocatable", k.Relocatable, true},
		{"KernelAlignment", k.KernelAlignment, uint32(synthAlign)},
		{"PrefAddress", k.PrefAddress, uint64(synthPrefAddress)},
		{"InitSize", k.InitSize, uint32(synthInitSize)},
		{"InitrdAddrMax", k.InitrdAddrMax, uint32(0x7FFFFFFF)},
		{"CmdlineSize", k.CmdlineSize, uint32(synthCmdlineSize)},
		{"PayloadOffset", k.PayloadOffset, uint32(0x100)},
		{"PayloadLength", k.PayloadLength, uint32(synthCodeLen / 2)},
		{"len(Code)", len(k.Code), synthCodeLen},
		{"Code starts after setup", &k.Code[0], &img[setupLen]},
		{"len(Header)", len(k.Header), 0x26C - 0x1F1},
		{"End", k.End(), uint64(synthEnd)},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestParseBzImageErrors(t *testing.T) {
	le := binary.LittleEndian
	tests := []struct {
		name string
		img  []byte
		want string // substring of the error
	}{
		{"empty", nil, "truncated: setup header needs 520 bytes, file has 0"},
		{"short", synthImage(nil)[:0x100], "truncated: setup header needs 520 bytes, file has 256"},
		{"boot flag", synthImage(func(b []byte) { b[offBootFlag] = 0 }), "not a bzImage: boot flag at 0x1FE is 0xAA00, want 0xAA55"},
		{"magic", synthImage(func(b []byte) { copy(b[offHeaderMagic:], "HdrX") }), "not a bzImage: no HdrS magic at 0x202"},
		{"protocol 2.10", synthImage(func(b []byte) { le.PutUint16(b[offVersion:], 0x020A) }),
			"boot protocol 2.10 too old: need 2.12 for 64-bit entry"},
		{"short header", synthImage(func(b []byte) { b[offJump+1] = 0x40 }), "setup header ends at 0x242, protocol 2.15 needs it to reach 0x268"},
		{"truncated setup", synthImage(nil)[:900], "truncated: setup needs 1024 bytes and protected-mode code follows it, file has 900"},
		{"setup only", synthImage(nil)[:1024], "truncated: setup needs 1024 bytes"},
		{"setup_sects 0 means 4", synthImage(func(b []byte) { b[offSetupSects] = 0 }), "truncated: protected-mode code is 4096 bytes (syssize), file has 2560"},
		{"truncated code", synthImage(nil)[:1024+100], "truncated: protected-mode code is 4096 bytes (syssize), file has 100"},
		{"no 64-bit entry", synthImage(func(b []byte) { le.PutUint16(b[offXLoadFlags:], 0x2) }), "XLF_KERNEL_64 not set in xloadflags 0x2"},
		{"zImage", synthImage(func(b []byte) { b[offLoadFlags] = 0 }), "LOADED_HIGH not set"},
		{"alignment", synthImage(func(b []byte) { le.PutUint32(b[offKernelAlignment:], 0x300000) }), "kernel_alignment 0x300000 is not a power of two"},
		{"alignment 0", synthImage(func(b []byte) { le.PutUint32(b[offKernelAlignment:], 0) }), "kernel_alignment 0x0 is not a power of two"},
		{"pref_address", synthImage(func(b []byte) { le.PutUint64(b[offPrefAddress:], 1<<33) }), "pref_address 0x200000000 is above 4 GiB"},
		{"init_size 0", synthImage(func(b []byte) { le.PutUint32(b[offInitSize:], 0) }), "init_size 0x0 is smaller"},
		{"init_size small", synthImage(func(b []byte) { le.PutUint32(b[offInitSize:], 100) }), "init_size 0x64 is smaller than the protected-mode code (0x1000 bytes)"},
		{"payload outside", synthImage(func(b []byte) { le.PutUint32(b[offPayloadOffset:], 0xF00) }),
			"compressed payload [0xF00, 0x1700) lies outside the 4096 bytes of protected-mode code"},
		{"payload wraps", synthImage(func(b []byte) {
			le.PutUint32(b[offPayloadOffset:], 0xFFFFFFFF)
			le.PutUint32(b[offPayloadLength:], 2)
		}), "lies outside"},
		{"payload empty", synthImage(func(b []byte) { le.PutUint32(b[offPayloadLength:], 0) }), "lies outside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseBzImage(tt.img)
			if err == nil {
				t.Fatalf("ParseBzImage succeeded (%+v), want error %q", k, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q is not one line", err)
			}
		})
	}
}

func TestParseBzImageNotBzImageIs(t *testing.T) {
	_, err := ParseBzImage(synthImage(func(b []byte) { b[offHeaderMagic] = 0 }))
	if !errors.Is(err, ErrNotBzImage) {
		t.Errorf("error %v does not wrap ErrNotBzImage", err)
	}
}

func TestParseBzImageVariants(t *testing.T) {
	le := binary.LittleEndian
	tests := []struct {
		name  string
		img   []byte
		check func(t *testing.T, k *Kernel)
	}{
		{"setup_sects 0 is 4 sectors", synthImageSized(0, synthCodeLen, nil), func(t *testing.T, k *Kernel) {
			if k.SetupSects != 4 || len(k.Code) != synthCodeLen {
				t.Errorf("SetupSects=%d len(Code)=%d, want 4 and %d", k.SetupSects, len(k.Code), synthCodeLen)
			}
		}},
		{"signature after code", append(synthImage(nil), make([]byte, 1500)...), func(t *testing.T, k *Kernel) {
			if len(k.Code) != synthCodeLen+1500 {
				t.Errorf("len(Code)=%d, want the whole rest of the file", len(k.Code))
			}
		}},
		{"long header is cut at boot_params' limit", synthImage(func(b []byte) { b[offJump+1] = 0xFF }), func(t *testing.T, k *Kernel) {
			if len(k.Header) != maxHeaderEnd-offSetupSects {
				t.Errorf("len(Header)=%d, want %d", len(k.Header), maxHeaderEnd-offSetupSects)
			}
		}},
		{"initrd_addr_max 0 means 0x37FFFFFF", synthImage(func(b []byte) { le.PutUint32(b[offInitrdAddrMax:], 0) }), func(t *testing.T, k *Kernel) {
			if k.InitrdAddrMax != 0x37FFFFFF {
				t.Errorf("InitrdAddrMax=0x%X", k.InitrdAddrMax)
			}
		}},
		{"version string without NUL", synthImage(func(b []byte) {
			for i := 0x300; i < 1024; i++ {
				b[i] = 'x'
			}
		}), func(t *testing.T, k *Kernel) {
			if k.KernelVersion != "" {
				t.Errorf("KernelVersion=%q, want empty", k.KernelVersion)
			}
		}},
		{"version pointer past setup", synthImage(func(b []byte) { le.PutUint16(b[offKernelVersion:], 0xFFFF) }), func(t *testing.T, k *Kernel) {
			if k.KernelVersion != "" {
				t.Errorf("KernelVersion=%q, want empty", k.KernelVersion)
			}
		}},
		{"fixed kernel runs at pref_address", synthImage(func(b []byte) {
			b[offRelocatable] = 0
			le.PutUint32(b[offKernelAlignment:], 3) // ignored when not relocatable
			le.PutUint64(b[offPrefAddress:], 32*mib)
		}), func(t *testing.T, k *Kernel) {
			if k.End() != 32*mib+synthInitSize {
				t.Errorf("End=0x%X, want 0x%X", k.End(), 32*mib+synthInitSize)
			}
		}},
		{"relocatable kernel aligned above pref_address", synthImage(func(b []byte) {
			le.PutUint64(b[offPrefAddress:], 0)
			le.PutUint32(b[offKernelAlignment:], 8*mib)
		}), func(t *testing.T, k *Kernel) {
			if k.End() != 8*mib+synthInitSize {
				t.Errorf("End=0x%X, want 0x%X", k.End(), 8*mib+synthInitSize)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseBzImage(tt.img)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, k)
		})
	}
}

// TestSeedCorpus keeps the committed fuzz seeds meaningful: the valid ones
// parse and each broken one fails for the reason its name gives.
func TestSeedCorpus(t *testing.T) {
	want := map[string]string{ // file name -> error substring, "" for valid
		"valid":              "",
		"valid-setup-sects0": "",
		"valid-signed":       "",
		"empty":              "truncated: setup header",
		"truncated-header":   "truncated: setup header",
		"truncated-setup":    "truncated: setup needs",
		"truncated-code":     "truncated: protected-mode code",
		"bad-boot-flag":      "boot flag",
		"no-hdrs":            "no HdrS magic",
		"protocol-2.10":      "too old",
		"no-xlf-kernel64":    "XLF_KERNEL_64",
		"payload-outside":    "lies outside",
		"short-header":       "setup header ends at",
		"bad-alignment":      "not a power of two",
		"garbled":            "not a bzImage",
	}
	checkSeeds(t, "FuzzParseBzImage", want, func(b []byte) error { _, err := ParseBzImage(b); return err })
}

// checkSeeds parses each named seed of the fuzz target's committed corpus:
// want maps a file name to a substring of its error, "" for a valid seed.
func checkSeeds(t *testing.T, target string, want map[string]string, parse func([]byte) error) {
	dir := filepath.Join("testdata", "fuzz", target)
	for name, substr := range want {
		t.Run(name, func(t *testing.T) {
			err := parse(readSeed(t, filepath.Join(dir, name)))
			switch {
			case substr == "" && err != nil:
				t.Errorf("seed should parse: %v", err)
			case substr != "" && (err == nil || !strings.Contains(err.Error(), substr)):
				t.Errorf("seed error = %v, want one containing %q", err, substr)
			}
		})
	}
}

// readSeed decodes a one-value []byte file in the "go test fuzz v1" format.
func readSeed(t *testing.T, path string) []byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(strings.TrimSpace(string(raw)), "\n", 2)
	if len(lines) != 2 || lines[0] != "go test fuzz v1" {
		t.Fatalf("%s: not a fuzz corpus file", path)
	}
	lit, ok := strings.CutPrefix(lines[1], "[]byte(")
	lit, ok2 := strings.CutSuffix(lit, ")")
	if !ok || !ok2 {
		t.Fatalf("%s: not a []byte value", path)
	}
	s, err := strconv.Unquote(lit)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return []byte(s)
}

func FuzzParseBzImage(f *testing.F) {
	f.Add(synthImage(nil))
	mem := newFakeMem(64 * mib)
	f.Fuzz(func(t *testing.T, img []byte) {
		k, err := ParseBzImage(img)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q is not one line", err)
			}
			return
		}
		if len(k.Code) == 0 || len(k.Header) < minHeaderEnd-offSetupSects {
			t.Fatalf("accepted image with %d bytes of code, %d of header", len(k.Code), len(k.Header))
		}
		if !bytes.Equal(k.Code, img[len(img)-len(k.Code):]) {
			t.Fatal("Code is not the tail of the image")
		}
		if k.End() < layout.KernelLoad+uint64(k.InitSize) {
			t.Fatalf("End 0x%X below KernelLoad+init_size", k.End())
		}
		loadKeepsMinRAM(t, mem, k)
	})
}

// loadKeepsMinRAM checks that Load keeps what MinRAM promises: it loads k
// with an initrd into 64 MiB (mem, emptied first) exactly when MinRAM says
// that is enough.
func loadKeepsMinRAM(t *testing.T, mem *fakeMem, k *Kernel) {
	t.Helper()
	initrd := []byte("initrd")
	need, err := k.MinRAM(uint64(len(initrd)))
	mem.regions = mem.regions[:0]
	_, lerr := Load(mem, k, Config{RAMSize: 64 * mib, Initrd: initrd})
	if err == nil && need <= 64*mib && lerr != nil {
		t.Fatalf("MinRAM says %d MiB suffice, Load in 64 MiB fails: %v", need/mib, lerr)
	}
	if lerr == nil && (err != nil || need > 64*mib) {
		t.Fatalf("Load in 64 MiB succeeded, MinRAM says %d MiB, %v", need/mib, err)
	}
}

func BenchmarkParseBzImage(b *testing.B) {
	// Debian-sized setup and code; parsing must not depend on the code size.
	img := synthImageSized(39, 14*mib, func(b []byte) { binary.LittleEndian.PutUint32(b[offInitSize:], 0x3378000) })
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseBzImage(img); err != nil {
			b.Fatal(err)
		}
	}
}
