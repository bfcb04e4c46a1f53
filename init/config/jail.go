package config

import (
	"fmt"
	"hash/fnv"
	"sort"

	"go.yaml.in/yaml/v3"
)

// Jail is how the VMMs' jails are made (every VMM runs in one; see
// internal/jail): each VM's VMM takes a uid and gid of its own from IDs.
// The switch's jail takes IDs.SwitchID.
type Jail struct {
	IDs IDRange
}

// IDRange is a range of uids (and the same gids), inclusive.
type IDRange struct {
	From, To int
}

// DefaultJailIDs is the range VM ids come from unless the file says
// otherwise: above every system and login account and the kernel's
// overflow id (65534), as large as a user namespace's usual share.
var DefaultJailIDs = IDRange{From: 200000, To: 265535}

// maxID bounds an id: uid_t is 32 bits, -1 means "unchanged" to the
// kernel, and ids above 2^31 trip programs that read them as signed.
// minID is the lowest: above every system and login account and the
// kernel's overflow id (65534).
const (
	maxID = 1<<31 - 1
	minID = 65536
)

// SwitchID is the uid and gid of the switch's jail: the id just below the
// VMs' range, or just above it when the range starts at the lowest id
// allowed. Never a VM's, so no VMM shares the switch's identity (and with
// it its lease files, or the right to signal it), and stable for as long
// as the range is: 199999 with the default range.
func (r IDRange) SwitchID() int {
	if r.From > minID {
		return r.From - 1
	}
	return r.To + 1
}

// jail decodes the jail: mapping.
func (d *decoder) jail(n *yaml.Node) Jail {
	j := Jail{IDs: DefaultJailIDs}
	d.mapping(n, map[string]func(*yaml.Node){
		"ids": func(v *yaml.Node) {
			var r IDRange
			d.mapping(v, map[string]func(*yaml.Node){
				"from": func(v *yaml.Node) { r.From, _ = d.integer(v) },
				"to":   func(v *yaml.Node) { r.To, _ = d.integer(v) },
			})
			switch {
			case v.Kind != yaml.MappingNode:
			case r.From <= 65535 || r.To > maxID || r.To < r.From:
				d.errf(v, "ids: from %d to %d: want 65536 <= from <= to <= %d (unprivileged ids of no account)", r.From, r.To, maxID)
			case r.From == minID && r.To == maxID:
				d.errf(v, "ids: from %d to %d leaves no id for the switch's jail, just outside the range", r.From, r.To)
			default:
				j.IDs = r
			}
		},
	})
	return j
}

// assignIDs gives each VM its jail's uid and gid (VM.ID): a hash of its
// name into the range, so that it stays the same across restarts and
// edits of the file, moved on to the next free id when two names meet
// (names in sorted order decide who moves, not their order in the file).
// It reports false when the range holds fewer ids than there are VMs.
func assignIDs(vms []VM, r IDRange) bool {
	size := uint64(r.To - r.From + 1)
	if uint64(len(vms)) > size {
		return false
	}
	order := make([]int, len(vms))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return vms[order[a]].Name < vms[order[b]].Name })
	taken := map[uint64]bool{}
	for _, i := range order {
		h := fnv.New64a()
		h.Write([]byte(vms[i].Name))
		slot := h.Sum64() % size
		for taken[slot] {
			slot = (slot + 1) % size
		}
		taken[slot] = true
		vms[i].ID = r.From + int(slot)
	}
	return true
}

func (r IDRange) String() string { return fmt.Sprintf("%d-%d", r.From, r.To) }
