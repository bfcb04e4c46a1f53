package image

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/hyperroot/hyperroot/board"
)

// PXE files: what a network boot server serves (docs/PXE.md).
const (
	PXEScript = "boot.ipxe"
	pxeReadme = "README.txt"
)

// WritePXE writes the files that network-boot the appliance built in
// imgDir into dir: its kernel and initramfs, and an iPXE script that loads
// them from wherever the script itself came from and points the appliance
// at its configuration.
func WritePXE(imgDir, dir string, b *board.Board, version string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, f := range []string{"vmlinuz", "initramfs.cpio"} {
		if err := linkOrCopy(filepath.Join(imgDir, f), filepath.Join(dir, f)); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, PXEScript), []byte(PXEBootScript(b.Cmdline, version)), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, pxeReadme), []byte(fmt.Sprintf(`hyperroot %s: network boot files

Serve this directory over HTTP and give iPXE the URL of %s as its boot
file; put the appliance's configuration next to it as config.yaml (or set
hyperroot-config before chaining the script: one file per host with
${mac:hexhyp}). A dnsmasq set-up for a real network: docs/PXE.md in the
hyperroot repository.
`, version, PXEScript)), 0o644)
}

// PXEBootScript is the iPXE script: relative names are fetched from where
// the script was, so the directory can move between servers unchanged.
// Two settings may be set before chaining it (an operator's own script, or
// iPXE's shell): hyperroot-config, the configuration's URL (default
// config.yaml beside the script), and hyperroot-args, more kernel
// command-line arguments (hyperroot.config.sha256=, ip=, ...).
func PXEBootScript(cmdline, version string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `#!ipxe
# hyperroot %s: boot the appliance from the network (./build.sh pxe).
# vmlinuz and initramfs.cpio are fetched relative to this script.
# hyperroot-config: where the appliance fetches its configuration (HTTP or
# HTTPS); ${mac:hexhyp}, ${mac}, ${uuid} or ${hostname} in it give each
# host its own file. hyperroot-args: more kernel command-line arguments.
isset ${hyperroot-config} || set hyperroot-config ${cwduri}config.yaml
echo hyperroot: configuration from ${hyperroot-config}
kernel vmlinuz initrd=initramfs.cpio %s hyperroot.config=${hyperroot-config} ${hyperroot-args}
initrd initramfs.cpio
boot
`, version, cmdline)
	return b.String()
}

// linkOrCopy hard-links src to dst, or copies it where a link cannot be
// made (another filesystem).
func linkOrCopy(src, dst string) error {
	os.Remove(dst)
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
