// Package image builds what hyperroot boots from: the appliance kernel taken
// from Debian's archive and initramfs archives made with u-root's mkuimage —
// the appliance's (the hyperroot binary as /init, the board's kernel modules,
// the resolved board description, the guest images) and the test guest's.
// It also makes the extra cpio archives that add files (a config, an overlay
// directory) to a built image without rebuilding it.
package image

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/uio/llog"

	"github.com/hyperroot/hyperroot/board"
)

// Initramfs is an initramfs to build with mkuimage.
type Initramfs struct {
	// Init is the program /init links to, as a path inside the archive.
	Init string
	// Files are "host-path:image-path" pairs (directories are added
	// recursively).
	Files []string
	// Staging is a scratch directory for generated files.
	Staging string
}

// Write builds the initramfs as an uncompressed newc cpio archive at out,
// atomically: a failed build leaves no file at out.
func (ir *Initramfs) Write(out string) error {
	if err := os.MkdirAll(ir.Staging, 0o755); err != nil {
		return err
	}
	tmp := out + ".tmp"
	os.Remove(tmp)
	err := uimage.Create(llog.New(slog.LevelWarn, func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "mkuimage: "+format+"\n", args...)
	}),
		uimage.WithCPIOOutput(tmp),
		// mkuimage's base archive: /dev/console (so init starts with a
		// console before devtmpfs is mounted) and the usual mount points.
		uimage.WithBaseArchive(uimage.DefaultRamfs()),
		uimage.WithTempDir(ir.Staging),
		uimage.WithSkipLDD(),
		uimage.WithFiles(ir.Files...),
		uimage.WithInit(ir.Init),
		uimage.WithShell(""),
		uimage.WithUinitCommand(""),
	)
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("mkuimage: %w", err)
	}
	return os.Rename(tmp, out)
}

// ModuleFiles returns the "host:image" pairs that put modules (files
// relative to /lib/modules/<release>) into an image, with a modules.dep
// trimmed to them (written into staging) and modules.builtin, which is what
// u-root's kmodule reads at boot.
func ModuleFiles(k *Extracted, modules []string, staging string) ([]string, error) {
	modDir := filepath.Join("lib", "modules", k.Release)
	var files []string
	for _, m := range modules {
		files = append(files, filepath.Join(k.ModulesDir(), m)+":"+filepath.Join(modDir, m))
	}
	if err := os.MkdirAll(staging, 0o755); err != nil {
		return nil, err
	}
	dep := filepath.Join(staging, "modules.dep")
	if err := writeModulesDep(k, modules, dep); err != nil {
		return nil, fmt.Errorf("modules.dep: %w", err)
	}
	return append(files,
		dep+":"+filepath.Join(modDir, "modules.dep"),
		filepath.Join(k.ModulesDir(), "modules.builtin")+":"+filepath.Join(modDir, "modules.builtin")), nil
}

// BoardFile writes the resolved board into staging and returns the pair
// that installs it at board.ImagePath.
func BoardFile(b *board.Board, staging string) (string, error) {
	data, err := b.Marshal()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(staging, 0o755); err != nil {
		return "", err
	}
	p := filepath.Join(staging, "board.yaml")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		return "", err
	}
	return p + ":" + board.ImagePath[1:], nil
}
