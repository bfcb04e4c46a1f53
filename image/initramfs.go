// Package image builds what hyperroot boots from: the appliance kernel taken
// from Debian's archive and an initramfs made with u-root's mkuimage that
// holds the hyperroot binary as /init, the board's kernel modules and the
// resolved board description. It also makes the extra cpio archives that add
// files (a config, an overlay directory) to a built image without rebuilding
// it.
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

// Initramfs says what goes into the appliance's initramfs.
type Initramfs struct {
	Binary  string     // the hyperroot executable, installed as /bin/hyperroot and linked from /init
	Kernel  *Extracted // where the modules come from
	Modules []string   // module files relative to /lib/modules/<release>
	Board   *board.Board
	// Files are extra "host-path:image-path" pairs (directories are added
	// recursively), e.g. guest kernels.
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
	modDir := filepath.Join("lib", "modules", ir.Kernel.Release)
	files := []string{ir.Binary + ":bin/hyperroot"}
	for _, m := range ir.Modules {
		files = append(files, filepath.Join(ir.Kernel.ModulesDir(), m)+":"+filepath.Join(modDir, m))
	}
	dep := filepath.Join(ir.Staging, "modules.dep")
	if err := writeModulesDep(ir.Kernel, ir.Modules, dep); err != nil {
		return fmt.Errorf("modules.dep: %w", err)
	}
	files = append(files,
		dep+":"+filepath.Join(modDir, "modules.dep"),
		filepath.Join(ir.Kernel.ModulesDir(), "modules.builtin")+":"+filepath.Join(modDir, "modules.builtin"))
	bdata, err := ir.Board.Marshal()
	if err != nil {
		return err
	}
	bpath := filepath.Join(ir.Staging, "board.yaml")
	if err := os.WriteFile(bpath, bdata, 0o644); err != nil {
		return err
	}
	files = append(files, bpath+":"+board.ImagePath[1:])
	files = append(files, ir.Files...)

	tmp := out + ".tmp"
	os.Remove(tmp)
	err = uimage.Create(llog.New(slog.LevelWarn, func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "mkuimage: "+format+"\n", args...)
	}),
		uimage.WithCPIOOutput(tmp),
		// mkuimage's base archive: /dev/console (so init starts with a
		// console before devtmpfs is mounted) and the usual mount points.
		uimage.WithBaseArchive(uimage.DefaultRamfs()),
		uimage.WithTempDir(ir.Staging),
		uimage.WithSkipLDD(),
		uimage.WithFiles(files...),
		uimage.WithInit("/bin/hyperroot"),
		uimage.WithShell(""),
		uimage.WithUinitCommand(""),
	)
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("mkuimage: %w", err)
	}
	return os.Rename(tmp, out)
}
