// Command mkimage builds the hyperroot appliance image for a board:
// out/image/vmlinuz (Debian's kernel), out/image/initramfs.cpio (mkuimage,
// with hyperroot as /init, the board's modules and the test guest under
// /guest), out/image/guest-initramfs.cpio (the test guest's own initramfs)
// and out/image/board.yaml (the board as resolved: kernel version, module
// files); with -bench it adds the benchmark program (tools/bench, as
// /bench/hyperroot-bench, with /bench/config.yaml: no VMs besides the
// benchmark's own) and the peer VMMs of the benchmarks (gokvm, and QEMU:
// qemu.go). build.sh calls it;
// each step prints what it does and how long it took, and a failure names
// the step and the cause.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hyperroot/hyperroot/board"
	"github.com/hyperroot/hyperroot/image"
	"github.com/hyperroot/hyperroot/internal/svirt"
)

// guestModules are loaded by the test guest: pvpanic reports a kernel panic
// to the VMM, button and evdev deliver the ACPI power button, virtio_pci and
// virtio_rng bind the VMM's virtio-rng device (the guest reports it),
// virtio_blk its disks (ext4, which the disk tests mount, is built into
// Debian's kernel: CONFIG_EXT4_FS=y).
var guestModules = []string{"pvpanic_mmio", "button", "evdev", "virtio_pci", "virtio_rng", "virtio_blk", "virtio_net", "virtio_console"}

// caBundle is where Debian keeps the public CAs, and where Go's TLS looks
// for them first.
const caBundle = "/etc/ssl/certs/ca-certificates.crt"

func main() {
	var (
		boardName = flag.String("board", "qemu", "board to build (a folder under -boards)")
		boards    = flag.String("boards", "board", "directory holding the boards")
		out       = flag.String("out", "out", "output directory")
		version   = flag.String("version", "dev", "version string baked into the binary")
		pxe       = flag.Bool("pxe", false, "also write the network boot files (kernel, initramfs, iPXE script) into <out>/pxe")
		bench     = flag.Bool("bench", false, "add the benchmark program as /bench/hyperroot-bench and the peer VMMs, gokvm as /bin/gokvm and this host's qemu-system-x86_64 with its libraries and firmware (never in a product image)")
	)
	flag.Parse()
	b, err := build(context.Background(), *boards, *boardName, *out, *version, *bench)
	if err == nil && *pxe {
		dir := filepath.Join(*out, "pxe")
		err = step("write network boot files into "+dir, func() error {
			return image.WritePXE(filepath.Join(*out, "image"), dir, b, *version)
		})
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
		os.Exit(1)
	}
}

// step runs one named step, timing it; a failure is wrapped with the name.
func step(name string, f func() error) error {
	start := time.Now()
	fmt.Printf("  - %s\n", name)
	if err := f(); err != nil {
		return fmt.Errorf("step %q failed: %w", name, err)
	}
	fmt.Printf("    done in %s\n", time.Since(start).Round(time.Millisecond))
	return nil
}

func logf(format string, args ...any) { fmt.Printf("    "+format+"\n", args...) }

func build(ctx context.Context, boards, name, out, version string, bench bool) (*board.Board, error) {
	var (
		b       *board.Board
		pkg     *image.Package
		kernel  *image.Extracted
		modules []string
	)
	cache := filepath.Join(out, "cache")
	imgDir := filepath.Join(out, "image")
	bin := filepath.Join(out, "hyperroot")
	guestBin := filepath.Join(out, "guest-init")
	benchBin := filepath.Join(out, "hyperroot-bench")
	steps := []struct {
		name string
		f    func() error
	}{
		{"load board " + name, func() (err error) {
			b, err = board.Find(boards, name)
			return err
		}},
		{"fetch kernel package " + "(board: " + name + ")", func() (err error) {
			pkg, err = image.FetchKernel(ctx, b.Kernel, filepath.Join(cache, "debs"), logf)
			return err
		}},
		{"unpack kernel", func() (err error) {
			dir := filepath.Join(cache, "kernel", strings.TrimSuffix(filepath.Base(pkg.Deb), ".deb"))
			kernel, err = image.Extract(ctx, pkg, dir)
			if err == nil {
				logf("kernel %s", kernel.Release)
			}
			return err
		}},
		{"resolve modules", func() (err error) {
			names := b.AllModules()
			if bench {
				names = append(names, benchModules...)
			}
			modules, err = image.ResolveModules(ctx, kernel, names)
			if err == nil {
				logf("%d module files for %s", len(modules), strings.Join(names, " "))
			}
			return err
		}},
		{"build hyperroot and the test guest's init (GOAMD64=v1, static)", func() error {
			if err := goBuild(ctx, "", bin, "./init", version); err != nil {
				return err
			}
			if bench {
				if err := goBuild(ctx, "", benchBin, "./tools/bench", version); err != nil {
					return err
				}
				// gokvm, the Go VMM peer, is pinned in a module of its
				// own (tools/gokvm/go.mod), out of the product's.
				if err := goBuild(ctx, gokvmModule, filepath.Join(out, "gokvm"), "github.com/bobuhiro11/gokvm", version); err != nil {
					return err
				}
			}
			return goBuild(ctx, "", guestBin, "./image/guest", version)
		}},
		{"write test guest initramfs (mkuimage)", func() error {
			if err := os.MkdirAll(imgDir, 0o755); err != nil {
				return err
			}
			staging := filepath.Join(out, "staging", "guest")
			mods, err := image.ResolveModules(ctx, kernel, guestModules)
			if err != nil {
				return err
			}
			files, err := image.ModuleFiles(kernel, mods, staging)
			if err != nil {
				return err
			}
			list := filepath.Join(staging, "modules")
			if err := os.WriteFile(list, []byte(strings.Join(guestModules, "\n")+"\n"), 0o644); err != nil {
				return err
			}
			files = append(files, guestBin+":bin/guest", list+":etc/modules")
			ir := &image.Initramfs{Init: "/bin/guest", Files: files, Staging: staging}
			return ir.Write(filepath.Join(imgDir, "guest-initramfs.cpio"))
		}},
		{"write appliance initramfs (mkuimage)", func() error {
			b.Resolved = &board.Resolved{
				KernelPackage: pkg.Name, KernelVersion: pkg.Version, KernelRelease: kernel.Release,
				Version: version, Modules: modules,
			}
			staging := filepath.Join(out, "staging", "appliance")
			defer os.RemoveAll(filepath.Join(out, "staging"))
			files, err := image.ModuleFiles(kernel, modules, staging)
			if err != nil {
				return err
			}
			bf, err := image.BoardFile(b, staging)
			if err != nil {
				return err
			}
			policy := filepath.Join(staging, "selinux-policy")
			if err := image.CompilePolicy(ctx, image.PolicySource, policy); err != nil {
				return err
			}
			// The public CAs (Debian's ca-certificates), for a
			// configuration fetched over HTTPS.
			if _, err := os.Stat(caBundle); err != nil {
				return fmt.Errorf("%w: install Debian's ca-certificates", err)
			}
			files = append(files, caBundle+":"+strings.TrimPrefix(caBundle, "/"))
			// The test guest's kernel also unpacked, which the VMM boots
			// without the decompressor (image.UnpackVmlinux).
			vmlinux := filepath.Join(staging, "vmlinux")
			if err := unpackVmlinux(kernel.Vmlinuz, vmlinux); err != nil {
				return err
			}
			files = append(files, bin+":bin/hyperroot", bf, policy+":"+strings.TrimPrefix(svirt.PolicyPath, "/"),
				// The test guest: the same Debian kernel and the guest init.
				kernel.Vmlinuz+":guest/vmlinuz", vmlinux+":guest/vmlinux",
				filepath.Join(imgDir, "guest-initramfs.cpio")+":guest/initramfs.cpio")
			if bench {
				cfg := filepath.Join(staging, "bench-config.yaml")
				if err := os.WriteFile(cfg, []byte(benchConfig), 0o644); err != nil {
					return err
				}
				files = append(files, filepath.Join(out, "gokvm")+":bin/gokvm",
					benchBin+":bench/hyperroot-bench", cfg+":bench/config.yaml")
				qemu, err := qemuFiles()
				if err != nil {
					return fmt.Errorf("add qemu: %w", err)
				}
				logf("qemu: %d files (binary, libraries, firmware)", len(qemu))
				files = append(files, qemu...)
			}
			ir := &image.Initramfs{Init: "/bin/hyperroot", Files: files, Staging: staging}
			if err := ir.Write(filepath.Join(imgDir, "initramfs.cpio")); err != nil {
				return err
			}
			return copyFile(kernel.Vmlinuz, filepath.Join(imgDir, "vmlinuz"))
		}},
		{"record build", func() error {
			data, err := b.Marshal()
			if err != nil {
				return err
			}
			if err := writeAtomic(filepath.Join(imgDir, "board.yaml"), data); err != nil {
				return err
			}
			for _, f := range []string{"vmlinuz", "initramfs.cpio", "guest-initramfs.cpio"} {
				if fi, err := os.Stat(filepath.Join(imgDir, f)); err == nil {
					logf("%s/%s: %.1f MiB", imgDir, f, float64(fi.Size())/(1<<20))
				}
			}
			logf("kernel %s %s (%s), hyperroot %s", pkg.Name, pkg.Version, kernel.Release, version)
			return nil
		}},
	}
	for _, s := range steps {
		if err := step(s.name, s.f); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// gokvmModule is the module directory gokvm is pinned in.
const gokvmModule = "tools/gokvm"

// benchConfig is the bench image's configuration (/bench/config.yaml,
// named by hyperroot.config= on its command line): no VMs, so that nothing
// but the benchmark's own guests runs beside it.
const benchConfig = "# The bench image: the benchmark program starts its own VMs.\nvms: []\n"

// goBuild builds an appliance binary: static, GOAMD64=v1 because QEMU's
// CPU models lack the v2/v3 features, stripped, reproducible. dir is the
// module directory to build in ("" for this one).
func goBuild(ctx context.Context, dir, dst, pkg, version string) error {
	dst, err := filepath.Abs(dst)
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath",
		"-ldflags", "-s -w -X main.version="+version, "-o", tmp, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("go build %s: %w", pkg, err)
	}
	return os.Rename(tmp, dst)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// unpackVmlinux writes the ELF vmlinux inside the bzImage at src to dst.
func unpackVmlinux(src, dst string) error {
	bz, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	elf, err := image.UnpackVmlinux(bz)
	if err != nil {
		return fmt.Errorf("unpack %s: %w", src, err)
	}
	logf("guest vmlinux: %d MB unpacked from the %d MB bzImage", len(elf)>>20, len(bz)>>20)
	return os.WriteFile(dst, elf, 0o644)
}
