package diskboot

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// FuzzConfigs: the loader configurations come from the guest's disk. Any
// text parses (never a panic), and every entry that comes out has a kernel
// path.
func FuzzConfigs(f *testing.F) {
	f.Add(debianGrub)
	f.Add("DEFAULT l\nLABEL l\n KERNEL /vmlinuz\n INITRD a,b\n APPEND x\n")
	f.Add("title T\nversion 1\nlinux /k\ninitrd /i\noptions o\n")
	f.Add("menuentry 'a\\' b' \"c\\\"\" {\nlinux /k 'q\n}\n}}}\n")
	f.Add("saved_entry=s>1\nset default=\"${saved_entry}\"\nsubmenu s {\nmenuentry a {\nlinux /a\n}\nmenuentry b {\nlinux /b\n}\n}\n")
	f.Fuzz(func(t *testing.T, text string) {
		g, def := grubCfg(text, grubEnv(text))
		if len(g) > 0 && (def < 0 || def >= len(g)) {
			t.Fatalf("default %d of %d entries", def, len(g))
		}
		x, xdef := extlinuxConf("/boot", text)
		for _, es := range [][]entry{g, x, {blsEntry("id", text)}} {
			for _, e := range es {
				if e.kernel == "" && len(es) > 1 {
					t.Fatalf("entry without a kernel: %+v", e)
				}
			}
		}
		choose(g, def, "")
		choose(x, xdef, "1")
		blsOrder(append(g, x...))
	})
}

// FuzzFind: the disk itself is hostile. Whatever its bytes, Find returns
// an entry or an error; it never panics or hangs. The seeds are the first
// 64 KiB of a small ext4 filesystem with an extlinux.conf, and a GPT.
func FuzzFind(f *testing.F) {
	f.Add(bytes.Repeat([]byte{0}, 4096))
	if seed, err := os.ReadFile(filepath.Join("testdata", "ext4-head.bin")); err == nil {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, disk []byte) {
		if len(disk) > 1<<20 {
			return
		}
		// The filesystem's tail reads as zeros: a disk of 1 MiB whose
		// head is the input.
		padded := make([]byte, 1<<20)
		copy(padded, disk)
		Find(bytes.NewReader(padded), int64(len(padded)), "")
	})
}

// TestFindSeed makes FuzzFind's seed: a 4 MiB ext4 filesystem without a
// journal holding an extlinux.conf and a tiny kernel, which Find must
// boot. With HYPERROOT_DISKBOOT_WRITE_SEED=1 it rewrites
// testdata/ext4-head.bin, the filesystem's first 64 KiB.
func TestFindSeed(t *testing.T) {
	testenv.NeedTool(t, "mkfs.ext4", "e2fsprogs")
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(tree, 0o755)
	os.WriteFile(filepath.Join(tree, "extlinux.conf"), []byte("DEFAULT l\nLABEL l\n KERNEL /k\n"), 0o644)
	os.WriteFile(filepath.Join(tree, "k"), fakeKernel("k"), 0o644)
	img := filepath.Join(dir, "fs.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-N", "16", "-O", "^has_journal", "-d", tree, img, "4M").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Find(bytes.NewReader(b), int64(len(b)), ""); err != nil {
		t.Fatalf("the seed's filesystem does not boot: %v", err)
	}
	if os.Getenv("HYPERROOT_DISKBOOT_WRITE_SEED") != "1" {
		return
	}
	os.MkdirAll("testdata", 0o755)
	if err := os.WriteFile(filepath.Join("testdata", "ext4-head.bin"), b[:64<<10], 0o644); err != nil {
		t.Fatal(err)
	}
}
