package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
	"go.yaml.in/yaml/v3"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/safeopen"
)

// A VM with cloud_init in its configuration gets a NoCloud seed as one more
// disk after its own: an ISO 9660 volume labelled "cidata" holding
// meta-data, user-data and network-config, which cloud-init in a stock
// distribution image finds by its label at the guest's first boot (the
// format cloud-localds writes). The supervisor writes it afresh at every
// start of the VM, under /run/hyperroot (the appliance's own files, out of
// any VM's disk paths), and hands it to the VMM read-only like any disk.
// It holds the VM's keys and user-data, so it is labelled as the VM's own
// image, not as content shared between VMs.

// seedDir holds the VMs' seeds.
const seedDir = "/run/hyperroot/cidata"

// seedID is the serial the guest reads for its seed disk.
const seedID = "cidata"

// instanceID is cloud-init's instance id of a VM: stable per VM name, so
// that cloud-init configures a VM once, at its first boot, and leaves what
// the guest changed since alone at the next ones.
func instanceID(vm string) string { return "hyperroot-" + vm }

// seedFiles are the files of vm's seed, by name.
func seedFiles(vm config.VM) (map[string][]byte, error) {
	ci := vm.CloudInit
	meta := map[string]any{"instance-id": instanceID(vm.Name), "local-hostname": ci.Hostname}
	if len(ci.SSHAuthorizedKeys) > 0 {
		meta["public-keys"] = ci.SSHAuthorizedKeys
	}
	md, err := yaml.Marshal(meta)
	if err != nil {
		return nil, err
	}
	ud := ci.UserData
	if ud == "" {
		ud = "#cloud-config\n{}\n"
	}
	files := map[string][]byte{"meta-data": md, "user-data": []byte(ud)}
	if ci.Network != "" {
		files["network-config"] = []byte(ci.Network)
	}
	return files, nil
}

// writeSeed writes vm's seed to dir/<vm>.iso, replacing an older one only
// once the new one is whole, and returns it opened read-only.
func writeSeed(dir string, vm config.VM) (*os.File, error) {
	files, err := seedFiles(vm)
	if err != nil {
		return nil, fmt.Errorf("cloud_init: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cloud_init seed: %w", err)
	}
	path := filepath.Join(dir, vm.Name+".iso") // seedPath in seedDir
	tmp := path + ".new"
	work := path + ".work"
	os.RemoveAll(work)
	os.Remove(tmp)
	defer os.RemoveAll(work)
	if err := os.Mkdir(work, 0o700); err != nil {
		return nil, fmt.Errorf("cloud_init seed: %w", err)
	}
	if err := buildISO(tmp, work, files); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("cloud_init seed: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("cloud_init seed: %w", err)
	}
	f, err := safeopen.Open(path, os.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("cloud_init seed: %w", err)
	}
	return f, nil
}

// buildISO writes an ISO 9660 volume labelled cidata with files at its
// root (Rock Ridge and Joliet names, so the guest sees them lower-case and
// with their dashes) to path, using work as go-diskfs's scratch directory.
func buildISO(path, work string, files map[string][]byte) (err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	fsys, err := iso9660.Create(file.New(f, false), 0, 0, 2048, work)
	if err != nil {
		return err
	}
	for name, data := range files {
		w, err := fsys.OpenFile("/"+name, os.O_CREATE|os.O_RDWR)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		_, werr := w.Write(data)
		if cerr := w.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return fmt.Errorf("%s: %w", name, werr)
		}
	}
	if err := fsys.Finalize(iso9660.FinalizeOptions{RockRidge: true, Joliet: true, VolumeIdentifier: seedID}); err != nil {
		return err
	}
	// A virtio-blk disk is whole 512-byte sectors; go-diskfs ends the
	// volume with the last file's last byte. Pad it to a whole block.
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() == 0 {
		return errors.New("empty volume")
	}
	if rem := st.Size() % 2048; rem != 0 {
		if err := f.Truncate(st.Size() + 2048 - rem); err != nil {
			return err
		}
	}
	return f.Sync()
}

// withSeed returns vm with its seed disk appended to its disks (the
// supervisor's list, in the order the guest sees them), for a VM with
// cloud_init; vm unchanged otherwise.
func withSeed(vm config.VM, path string) config.VM {
	if vm.CloudInit == nil {
		return vm
	}
	vm.Disks = append(append([]config.Disk(nil), vm.Disks...), config.Disk{Path: path, ReadOnly: true, Format: config.FormatRaw, ID: seedID})
	return vm
}

// seedPath is where vm's seed is written.
func seedPath(vm string) string { return filepath.Join(seedDir, vm+".iso") }

// isSeed says whether disk is a VM's cloud-init seed.
func isSeed(d config.Disk) bool { return d.ID == seedID && strings.HasPrefix(d.Path, seedDir+"/") }
