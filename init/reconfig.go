package main

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/api"
	"github.com/hyperroot/hyperroot/internal/atomicfile"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

// A configuration put through the API (PUT /v1/config) is applied live,
// as a difference from the one in force: VMs it adds start, VMs it drops
// stop and are forgotten, VMs whose qos alone changed get the new limits at
// once, NICs whose limits changed get them at once at their switch ports,
// and other changed VMs are restarted with their new configuration.
// What the appliance makes at boot only (the switch's networks and ports,
// the host address, huge page pools, the jails' id range, the API's
// listener) cannot change so: such a configuration is refused whole, and
// nothing changes. It is kept in memory (a data disk will keep it across
// reboots).

// configPlan is what applying a configuration does, VM by VM.
type configPlan struct {
	start, stop, restart, qos, same []string
	nicLimits                       []string // VMs whose NICs' limits changed (besides what else did)
	// VMs whose switch ports go (stopped VMs, or restarted ones whose
	// NICs changed) and come (started VMs, or those restarted): NICs
	// are ports of the switch, which PID 1 asks to add and remove them.
	dropPorts, addPorts []string
	next                *config.Config
}

// planConfig compares next with cur. An error lists every change that
// cannot be made live.
func planConfig(cur, next *config.Config) (configPlan, error) {
	p := configPlan{next: next}
	var errs []string
	for _, k := range []struct {
		key      string
		cur, nxt any
	}{
		{"networks", cur.Networks, next.Networks},
		{"host", cur.Host, next.Host},
		{"hugepages", cur.HugePages, next.HugePages},
		{"jail", cur.Jail, next.Jail},
		{"api", cur.API, next.API},
		{"data", cur.Data, next.Data},
		{"pci", cur.PCI, next.PCI},
	} {
		if !equalish(k.cur, k.nxt) {
			errs = append(errs, k.key+": changed; it takes effect at boot only (the switch, the host address, huge page pools, jails, the API's listener, the data disk and SR-IOV virtual functions are set up then)")
		}
	}
	have := map[string]config.VM{}
	for _, vm := range cur.VMs {
		have[vm.Name] = vm
	}
	for _, vm := range next.VMs {
		old, ok := have[vm.Name]
		delete(have, vm.Name)
		switch {
		case !ok:
			p.start = append(p.start, vm.Name)
			if len(vm.NICs) > 0 {
				p.addPorts = append(p.addPorts, vm.Name)
			}
		case !equalExceptLimits(old.NICs, vm.NICs):
			// Other NICs: other ports, and a restart.
			p.restart = append(p.restart, vm.Name)
			if len(old.NICs) > 0 {
				p.dropPorts = append(p.dropPorts, vm.Name)
			}
			if len(vm.NICs) > 0 {
				p.addPorts = append(p.addPorts, vm.Name)
			}
		default:
			limits := !equalish(old.NICs, vm.NICs)
			if limits {
				p.nicLimits = append(p.nicLimits, vm.Name)
			}
			o, n := old, vm
			o.NICs, n.NICs = nil, nil
			switch {
			case reflect.DeepEqual(o, n) && !limits:
				p.same = append(p.same, vm.Name)
			case reflect.DeepEqual(o, n):
			case equalExceptQoS(o, n):
				p.qos = append(p.qos, vm.Name)
			default:
				p.restart = append(p.restart, vm.Name)
			}
		}
	}
	for _, vm := range cur.VMs {
		if _, gone := have[vm.Name]; gone {
			p.stop = append(p.stop, vm.Name)
			if len(vm.NICs) > 0 {
				p.dropPorts = append(p.dropPorts, vm.Name)
			}
		}
	}
	if len(errs) > 0 {
		return configPlan{}, errors.New(strings.Join(errs, "; "))
	}
	return p, nil
}

// equalish is reflect.DeepEqual with an empty slice or map equal to nil,
// as a file that says "networks: []" and one that says nothing mean the
// same.
func equalish(a, b any) bool {
	empty := func(v any) bool {
		r := reflect.ValueOf(v)
		switch r.Kind() {
		case reflect.Slice, reflect.Map:
			return r.Len() == 0
		case reflect.Pointer:
			return r.IsNil()
		}
		return false
	}
	return reflect.DeepEqual(a, b) || (empty(a) && empty(b))
}

// writeSwitchFile replaces the switch's copy of the configuration.
func (l *liveConfig) writeSwitchFile(f *fleet, text string) {
	if l.switchFile == "" {
		return
	}
	if err := atomicfile.Write(l.switchFile, []byte(text), 0o644); err != nil {
		f.c.Errorf("config", fmt.Errorf("the switch's copy: %w", err))
	}
}

// addPorts asks the switch for vm's NICs' ports; a port that fails takes
// the ones added before it back.
func (l *liveConfig) addPorts(vm config.VM) error {
	if l.sw == nil {
		return errors.New("no switch runs")
	}
	for i := range vm.NICs {
		if err := l.sw.AddPort(vm, i); err != nil {
			for j := range i {
				l.sw.RemovePort(portName(vm.Name, j))
			}
			return fmt.Errorf("nic %d: %w", i, err)
		}
	}
	return nil
}

// dropPorts asks the switch to take vm's NICs' ports off (its VMM has
// stopped), then removes their socket directory, which a switch no
// longer root cannot.
func (l *liveConfig) dropPorts(vm config.VM) error {
	if l.sw == nil {
		return errors.New("no switch runs")
	}
	var errs []error
	for i := range vm.NICs {
		if err := l.sw.RemovePort(portName(vm.Name, i)); err != nil {
			errs = append(errs, fmt.Errorf("nic %d: %w", i, err))
		}
	}
	if err := os.RemoveAll(vmmcli.NICDir(l.sw.directory(), vm.Name)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// equalExceptLimits reports whether two VMs' NICs are the same but for
// their limits.
func equalExceptLimits(a, b []config.NIC) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		x.Limits, y.Limits = config.NICLimits{}, config.NICLimits{}
		if !reflect.DeepEqual(x, y) {
			return false
		}
	}
	return true
}

func equalExceptQoS(a, b config.VM) bool {
	a.QoS, b.QoS = config.QoS{}, config.QoS{}
	return reflect.DeepEqual(a, b)
}

// liveConfig is the configuration in force and its text, which the API
// shows and replaces.
type liveConfig struct {
	mu   sync.Mutex
	cfg  *config.Config
	text string
	// save keeps an applied configuration for the next boot (on the data
	// disk); nil when there is nowhere to keep it.
	save func(text string) error
	// sw is the running switch, nil without one; switchFile the
	// configuration file it starts from, rewritten on each apply so
	// that a switch that restarts has the NICs' limits in force.
	sw         *netSwitch
	switchFile string
}

// newLiveConfig is the configuration the appliance booted with: cfg, read
// from path ("" for the built-in default, which has no text).
func newLiveConfig(cfg *config.Config, path string) *liveConfig {
	// A configuration that did not load leaves the zero one (no VMs),
	// whose jail range a file's default must not count as a change.
	if cfg.Jail == (config.Jail{}) {
		c := *cfg
		c.Jail = config.Jail{IDs: config.DefaultJailIDs}
		cfg = &c
	}
	text := "# no configuration file in force (none, the built-in default of " + fmt.Sprint(len(cfg.VMs)) + " VMs, or one that did not load: see the console); a configuration put here replaces it\n"
	if path != "" {
		if b, err := os.ReadFile(path); err == nil {
			text = string(b)
		}
	}
	return &liveConfig{cfg: cfg, text: text}
}

// apply puts text in force on f: parsed (strictly, with the file's
// line:column messages: ErrInvalid), planned (a change that cannot be
// made live: ErrConflict), then carried out VM by VM. A VM that then
// fails to start is reported in the result; the configuration stays in
// force, as a boot's would.
func (l *liveConfig) apply(f *fleet, text string) (api.ConfigResult, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.applyLocked(f, text)
}

// addVM adds a VM (vmText: its mapping, as an item of the file's vms:) to
// the configuration in force and applies it: the VM starts.
func (l *liveConfig) addVM(f *fleet, vmText string) (api.ConfigResult, error) {
	var item yaml.Node
	if err := yaml.Unmarshal([]byte(vmText), &item); err != nil || len(item.Content) != 1 || item.Content[0].Kind != yaml.MappingNode {
		return api.ConfigResult{}, fmt.Errorf("vm: want one VM as a mapping (name, kernel, ...), as an item of the configuration's vms: %w", api.ErrInvalid)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	text, err := editVMs(l.text, func(vms *yaml.Node) error {
		vms.Content = append(vms.Content, blockStyle(item.Content[0]))
		return nil
	})
	if err != nil {
		return api.ConfigResult{}, err
	}
	return l.applyLocked(f, text)
}

// removeVM drops VM name from the configuration in force and applies it:
// the VM stops and is forgotten.
func (l *liveConfig) removeVM(f *fleet, name string) (api.ConfigResult, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	text, err := editVMs(l.text, func(vms *yaml.Node) error {
		for i, item := range vms.Content {
			if itemName(item) == name {
				vms.Content = slices.Delete(vms.Content, i, i+1)
				return nil
			}
		}
		return fmt.Errorf("no vm %q in the configuration: %w", name, api.ErrNotFound)
	})
	if err != nil {
		return api.ConfigResult{}, err
	}
	return l.applyLocked(f, text)
}

// itemName is the name of a vms: item, "" for one without.
func itemName(item *yaml.Node) string {
	for j := 0; item.Kind == yaml.MappingNode && j+1 < len(item.Content); j += 2 {
		if item.Content[j].Value == "name" {
			return item.Content[j+1].Value
		}
	}
	return ""
}

// editVMs returns text with its vms: list changed by edit (made if
// missing), comments and the rest as they were.
func editVMs(text string, edit func(vms *yaml.Node) error) (string, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		return "", fmt.Errorf("the configuration in force: %w", err)
	}
	if len(doc.Content) == 0 { // empty, or comments only
		doc = yaml.Node{Kind: yaml.DocumentNode, HeadComment: doc.HeadComment, Content: []*yaml.Node{{Kind: yaml.MappingNode}}}
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return "", errors.New("the configuration in force is not a mapping")
	}
	var vms *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "vms" {
			vms = root.Content[i+1]
		}
	}
	if vms == nil {
		vms = &yaml.Node{Kind: yaml.SequenceNode}
		root.Content = append(root.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: "vms"}, vms)
	}
	if vms.Kind != yaml.SequenceNode {
		return "", errors.New("the configuration in force: vms is not a list")
	}
	vms.Style = 0 // block style: a flow list would take the new item's block style badly
	if err := edit(vms); err != nil {
		return "", err
	}
	var out strings.Builder
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return "", err
	}
	return out.String(), enc.Close()
}

// blockStyle writes n as the configuration files are written (block
// mappings, plain scalars), whether it came as JSON or as flow YAML; the
// encoder quotes a scalar that needs it.
func blockStyle(n *yaml.Node) *yaml.Node {
	n.Style = 0
	for _, c := range n.Content {
		blockStyle(c)
	}
	return n
}

func (l *liveConfig) applyLocked(f *fleet, text string) (api.ConfigResult, error) {
	next, err := config.Parse("config", []byte(text))
	if err != nil {
		return api.ConfigResult{}, fmt.Errorf("%w: %w", err, api.ErrInvalid)
	}
	p, err := planConfig(l.cfg, next)
	if err != nil {
		return api.ConfigResult{}, fmt.Errorf("%w: %w", err, api.ErrConflict)
	}
	byName := map[string]config.VM{}
	for _, vm := range next.VMs {
		byName[vm.Name] = vm
	}
	r := api.ConfigResult{Started: p.start, Stopped: p.stop, Restarted: p.restart, QoS: p.qos, NICLimits: p.nicLimits, Unchanged: p.same}
	fails := map[string]string{}
	failed := func(name string, err error) {
		if err != nil {
			fails[name] = err.Error()
		}
	}
	// First: a switch that restarts from here on has the new ports and
	// limits.
	l.writeSwitchFile(f, text)
	cur := map[string]config.VM{}
	for _, vm := range l.cfg.VMs {
		cur[vm.Name] = vm
	}
	if len(p.nicLimits) > 0 {
		for _, name := range p.nicLimits {
			for i, nic := range byName[name].NICs {
				if nic.Limits != cur[name].NICs[i].Limits {
					failed(name, l.sw.SetLimits(portName(name, i), nic.Limits))
				}
			}
		}
	}
	// Stopped first: their disks may be the new VMs'.
	for _, name := range slices.Concat(p.stop, p.restart) {
		failed(name, f.RemoveVM(name))
	}
	// Then their ports, before the new ones: a MAC may move.
	for _, name := range p.dropPorts {
		failed(name, l.dropPorts(cur[name]))
	}
	portless := map[string]bool{} // VMs whose ports the switch did not add: not started
	for _, name := range p.addPorts {
		if err := l.addPorts(byName[name]); err != nil {
			failed(name, err)
			portless[name] = true
		}
	}
	for _, name := range p.qos {
		_, err := f.setQoS(name, byName[name].QoS)
		failed(name, err)
	}
	for _, name := range slices.Concat(p.restart, p.start) {
		if !portless[name] {
			failed(name, f.AddVM(byName[name]))
		}
	}
	if len(portless) > 0 {
		// Not added: the configuration in force goes on without them
		// (their failures say why), and a later apply adds them again.
		kept, err := editVMs(text, func(vms *yaml.Node) error {
			vms.Content = slices.DeleteFunc(vms.Content, func(item *yaml.Node) bool { return portless[itemName(item)] })
			return nil
		})
		if err == nil {
			if n, perr := config.Parse("config", []byte(kept)); perr == nil {
				text, next = kept, n
				l.writeSwitchFile(f, text)
			}
		}
	}
	if len(fails) > 0 {
		r.Failed = fails
	}
	l.cfg, l.text = next, text
	f.c.Printf("config: applied live: %s", r)
	if l.save != nil {
		// After the apply: power lost before this leaves the previous
		// configuration on the disk, whole, for the next boot.
		if err := l.save(text); err != nil {
			f.c.Errorf("config", fmt.Errorf("not kept for the next boot: %w", err))
		} else {
			f.c.Printf("config: kept on the data disk for the next boot (%s)", savedConfig)
		}
	}
	return r, nil
}
