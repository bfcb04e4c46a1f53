package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/cgroup"
)

// The appliance's cgroup v2 tree (internal/cgroup), made at boot:
//
//	/sys/fs/cgroup/hyperroot/system      PID 1, the switch, the hyperroot.run job
//	/sys/fs/cgroup/hyperroot/vms/<name>  one VMM each, made before it starts
//
// A VMM is cloned straight into its group (CLONE_INTO_CGROUP), so the
// guest never runs outside its limits; the group goes when the VMM has
// exited, after the supervisor read whether the OOM killer ended it.
// The switch has a group of its own, hyperroot/switch, so that what it
// uses is counted apart from PID 1 ("qos switch"). system and switch keep
// a memory reserve each (memory.min) so that guests pressing on memory
// reclaim from each other before they reclaim from PID 1 and the switch,
// which every VM needs.
type cgroups struct {
	root, system, vms, netSwitch *cgroup.Group
	controllers                  map[string]bool
}

const (
	cgroupTop = "hyperroot"
	// systemReserve is system's memory.min, switchReserve the switch
	// group's: PID 1 and the switch use a few tens of MiB each.
	systemReserve = 64 << 20
	switchReserve = 32 << 20
)

// wantControllers are the controllers the VMs' groups use, when the
// kernel has them.
var wantControllers = []string{"cpu", "cpuset", "memory", "io", "pids"}

// setupCgroups makes the tree and moves PID 1 into system. It returns nil
// (and the VMs run without groups) if cgroup v2 is not usable; a VM that
// asks for QoS then fails to start, saying why.
func setupCgroups(c *console) *cgroups {
	cg, err := makeCgroups(cgroup.Root, os.Getpid())
	if err != nil {
		c.Errorf("cgroups", err)
		return nil
	}
	var names []string
	for _, n := range wantControllers {
		if cg.controllers[n] {
			names = append(names, n)
		}
	}
	// The reserves as the kernel holds them, read back: what the
	// console says is what guests cannot take.
	reserve := func(g *cgroup.Group) string {
		if v, err := g.Get("memory.min"); err == nil {
			if n, err := strconv.ParseUint(v, 10, 64); err == nil {
				return fmt.Sprintf("%d MiB", n>>20)
			}
		}
		return "none"
	}
	c.Printf("cgroups: %s; appliance reserve %s, switch %s", strings.Join(names, " "), reserve(cg.system), reserve(cg.netSwitch))
	return cg
}

// makeCgroups builds the tree under root and moves process self (PID 1)
// into its system group.
func makeCgroups(root string, self int) (*cgroups, error) {
	r, err := cgroup.Open(root)
	if err != nil {
		return nil, err
	}
	avail, err := r.Controllers()
	if err != nil {
		return nil, err
	}
	cg := &cgroups{root: r, controllers: map[string]bool{}}
	var enable []string
	for _, n := range wantControllers {
		if slices.Contains(avail, n) {
			enable = append(enable, n)
			cg.controllers[n] = true
		}
	}
	top, err := r.Mkdir(cgroupTop)
	if err != nil {
		return nil, err
	}
	if cg.system, err = top.Mkdir("system"); err != nil {
		return nil, err
	}
	if cg.vms, err = top.Mkdir("vms"); err != nil {
		return nil, err
	}
	if cg.netSwitch, err = top.Mkdir("switch"); err != nil {
		return nil, err
	}
	// Controllers are enabled from the root down; a level may hold no
	// processes once it has them, so PID 1 leaves the root first.
	if err := cg.system.Move(self); err != nil {
		return nil, err
	}
	for _, g := range []*cgroup.Group{r, top, cg.vms} {
		if len(enable) > 0 {
			if err := g.EnableControllers(enable...); err != nil {
				return nil, err
			}
		}
	}
	if cg.controllers["memory"] {
		if err := cg.system.Set("memory.min", strconv.Itoa(systemReserve)); err != nil {
			return nil, err
		}
		if err := cg.netSwitch.Set("memory.min", strconv.Itoa(switchReserve)); err != nil {
			return nil, err
		}
	}
	return cg, nil
}

// vmGroup makes VM vm's group with its limits, ready for its VMM to be
// cloned into. cg may be nil (no cgroups): then a VM without QoS runs
// without a group, and one with QoS gets an error.
func (cg *cgroups) vmGroup(vm config.VM) (*cgroup.Group, error) {
	if cg == nil {
		if !vm.QoS.IsZero() {
			return nil, errors.New("qos: the appliance has no cgroup v2 (see the cgroups error at boot)")
		}
		return nil, nil
	}
	settings, err := cg.settings(vm.QoS)
	if err != nil {
		return nil, err
	}
	cpus, err := pinCPUs(vm.Pin)
	if err != nil {
		return nil, err
	}
	mems, nodeCPUs, err := numaCPUSet(vm.NUMA)
	if err != nil {
		return nil, err
	}
	if cpus == "" {
		cpus = nodeCPUs // pin: says where exactly, within the node or not
	}
	if (cpus != "" || mems != "") && !cg.controllers["cpuset"] {
		return nil, errors.New("pin and numa: need the kernel's cpuset controller, which the appliance lacks")
	}
	if cpus != "" {
		settings = append(settings, setting{file: "cpuset.cpus", value: cpus, asked: true})
	}
	if mems != "" {
		settings = append(settings, setting{file: "cpuset.mems", value: mems, asked: true})
	}
	g, err := cg.vms.Mkdir(vm.Name)
	if err != nil {
		return nil, err
	}
	if err := cg.apply(g, settings); err != nil {
		g.Remove(0)
		return nil, err
	}
	return g, nil
}

// pinCPUs checks that the CPUs a VM is pinned to are the appliance's
// (those PID 1 may run on) and returns them as cpuset.cpus wants them
// ("" when the VM is not pinned).
func pinCPUs(p config.Pin) (string, error) {
	all := p.CPUs()
	if len(all) == 0 {
		return "", nil
	}
	var mine unix.CPUSet
	if err := unix.SchedGetaffinity(0, &mine); err != nil {
		return "", fmt.Errorf("pin: %w", err)
	}
	w := make([]string, len(all))
	for i, c := range all {
		if !mine.IsSet(c) {
			return "", fmt.Errorf("pin: CPU %d is not one of the appliance's %d CPUs", c, mine.Count())
		}
		w[i] = strconv.Itoa(c)
	}
	return strings.Join(w, ","), nil
}

// settings are q's cgroup files for this appliance: an error if q asks
// for more CPU than it has or for a controller its kernel lacks.
func (cg *cgroups) settings(q config.QoS) ([]setting, error) {
	settings, err := qosSettings(q, runtime.NumCPU(), blockDevice)
	if err != nil {
		return nil, fmt.Errorf("qos: %w", err)
	}
	for _, s := range settings {
		if s.asked && !cg.controllers[s.controller()] {
			return nil, fmt.Errorf("qos: %s needs the kernel's %s controller, which the appliance lacks", s.file, s.controller())
		}
	}
	return settings, nil
}

// apply writes settings to g, skipping those of controllers the kernel
// lacks (left at their defaults: vmGroup refused any that were asked).
// Devices g limits that settings no longer name get their defaults back,
// and a device given a weight gets the kernel's iocost controller, which
// io.weight needs.
func (cg *cgroups) apply(g *cgroup.Group, settings []setting) error {
	if cg.controllers["io"] {
		if err := cg.prepareIO(g, settings); err != nil {
			return fmt.Errorf("qos: %w", err)
		}
	}
	for _, s := range settings {
		if !cg.controllers[s.controller()] {
			continue
		}
		if err := g.Set(s.file, s.value); err != nil {
			return fmt.Errorf("qos: %w", err)
		}
	}
	return nil
}

// setting is one cgroup file and the value written to it; asked says
// whether the configuration set it (else it is the kernel's default).
type setting struct {
	file, value string
	asked       bool
}

// controller is the controller a setting belongs to: the file's prefix.
func (s setting) controller() string {
	c, _, _ := strings.Cut(s.file, ".")
	return c
}

// cpuPeriod is the cpu.max period: 100 ms, the kernel's default. A VM at
// its quota waits for the next period; shorter periods cost more
// scheduler work, longer ones make the waits longer.
const cpuPeriod = 100 * time.Millisecond

// qosSettings turns a VM's QoS into cgroup files. Every file is written,
// with the kernel's default ("max", weight 100) where the QoS sets
// nothing, so that a group changed live holds exactly what it says; asked
// marks the ones the QoS set.
func qosSettings(q config.QoS, hostCPUs int, device func(path string) (string, error)) ([]setting, error) {
	if q.CPU.Max > hostCPUs*100 {
		return nil, fmt.Errorf("cpu max %d%% is more than the appliance's %d CPUs (%d%%)", q.CPU.Max, hostCPUs, hostCPUs*100)
	}
	or := func(asked bool, v, def string) setting {
		if asked {
			return setting{value: v, asked: true}
		}
		return setting{value: def}
	}
	period := cpuPeriod.Microseconds()
	files := []struct {
		file string
		setting
	}{
		{"cpu.weight", or(q.CPU.Weight != 0, strconv.Itoa(q.CPU.Weight), "100")},
		{"cpu.max", or(q.CPU.Max != 0, fmt.Sprintf("%d %d", period*int64(q.CPU.Max)/100, period), fmt.Sprintf("max %d", period))},
		// The appliance has no swap: a VMM over memory.max is killed.
		{"memory.max", or(q.Memory.Max != 0, strconv.FormatUint(uint64(q.Memory.Max), 10), "max")},
		{"memory.high", or(q.Memory.High != 0, strconv.FormatUint(uint64(q.Memory.High), 10), "max")},
		{"pids.max", or(q.Pids != 0, strconv.Itoa(q.Pids), "max")},
	}
	s := make([]setting, len(files))
	for i, f := range files {
		s[i] = f.setting
		s[i].file = f.file
	}
	io, err := ioSettings(q.IO, device)
	return append(s, io...), err
}

// ioSettings are the io.max and io.weight lines of a VM's I/O limits, one
// per device, its number ("major:minor") found by device.
func ioSettings(limits []config.IOLimit, device func(path string) (string, error)) ([]setting, error) {
	var s []setting
	for _, l := range limits {
		dev, err := device(l.Device)
		if err != nil {
			return nil, fmt.Errorf("io %s: %w", l.Device, err)
		}
		val := func(n uint64) string {
			if n == 0 {
				return "max"
			}
			return strconv.FormatUint(n, 10)
		}
		s = append(s, setting{file: "io.max", asked: true, value: fmt.Sprintf("%s rbps=%s wbps=%s riops=%s wiops=%s",
			dev, val(uint64(l.ReadBytes)), val(uint64(l.WriteBytes)), val(uint64(l.ReadIOPS)), val(uint64(l.WriteIOPS)))})
		if l.Weight != 0 {
			s = append(s, setting{file: "io.weight", asked: true, value: fmt.Sprintf("%s %d", dev, l.Weight)})
		}
	}
	return s, nil
}

// blockDevice is the number ("major:minor") of the block device at path,
// or of the disk it is a partition of: the io controller limits whole
// disks.
func blockDevice(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", errors.New("not a block device")
	}
	dev := fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	sys := "/sys/dev/block/" + dev
	if _, err := os.Stat(sys + "/partition"); err == nil {
		parent, err := os.ReadFile(sys + "/../dev")
		if err != nil {
			return "", fmt.Errorf("partition %s: its disk: %w", dev, err)
		}
		dev = strings.TrimSpace(string(parent))
	}
	return dev, nil
}

// prepareIO gives the devices g limits that settings no longer name their
// defaults back (a live change that drops a device), and turns on the
// iocost controller of each device settings give a weight.
func (cg *cgroups) prepareIO(g *cgroup.Group, settings []setting) error {
	named := map[string]bool{}
	for _, s := range settings {
		if s.file == "io.max" || s.file == "io.weight" {
			dev, _, _ := strings.Cut(s.value, " ")
			named[s.file+" "+dev] = true
			if s.file == "io.weight" && cg.root != nil {
				if err := cg.root.Set("io.cost.qos", dev+" enable=1"); err != nil {
					return fmt.Errorf("io weight on %s needs the kernel's iocost controller: %w", dev, err)
				}
			}
		}
	}
	for file, reset := range map[string]string{"io.max": "rbps=max wbps=max riops=max wiops=max", "io.weight": "default"} {
		cur, err := g.Get(file)
		if err != nil {
			continue // a kernel without it: nothing was set either
		}
		for _, line := range strings.Split(cur, "\n") {
			dev, _, _ := strings.Cut(strings.TrimSpace(line), " ")
			if !strings.Contains(dev, ":") || named[file+" "+dev] {
				continue
			}
			if err := g.Set(file, dev+" "+reset); err != nil {
				return err
			}
		}
	}
	return nil
}

// QoS is the console's "qos <vm> [<qos>]". Without a qos it reports the
// VM's limits and what its VMM uses; with one (a flow mapping, as in the
// configuration: "{cpu: {max: 50%}}") it replaces the VM's QoS: at once
// on the running VMM's group, and for its later starts.
func (f *fleet) QoS(name, text string) (string, error) {
	f.mu.Lock()
	e := f.vms[name]
	f.mu.Unlock()
	if e == nil && name == "switch" && f.cg != nil && text == "" {
		// No VM has that name: what the switch's group used.
		return "qos switch " + groupUsage(f.cg.netSwitch), nil
	}
	if e == nil {
		return "", fmt.Errorf("no vm %q", name)
	}
	if f.cg == nil {
		return "", errors.New("qos: the appliance has no cgroup v2")
	}
	if strings.TrimSpace(text) != "" {
		q, err := config.ParseQoS("qos "+name, text)
		if err != nil {
			return "", err
		}
		return f.setQoS(name, q)
	}
	e.mu.Lock()
	g, q := e.group, e.qos
	e.mu.Unlock()
	settings, _ := qosSettings(q, runtime.NumCPU(), blockDevice)
	if g == nil {
		return "qos " + name + " not running; " + describeQoS(settings), nil
	}
	line := "qos " + name + " " + groupUsage(g) + " " + describeQoS(settings)
	if p := e.sup.Process(); p != nil {
		if a := threadAffinity(p.Pid()); a != "" {
			line += " " + a
		}
		if n := guestRAMNodes(p.Pid()); n != "" {
			line += " " + n
		}
	}
	return line, nil
}

// setQoS replaces VM name's QoS with q: at once on its running VMM's
// group, and for its later starts. It reports what it set as the console's
// "qos <vm> set: ..." line.
func (f *fleet) setQoS(name string, q config.QoS) (string, error) {
	e, err := f.entry(name)
	if err != nil {
		return "", err
	}
	if f.cg == nil {
		return "", errors.New("qos: the appliance has no cgroup v2")
	}
	settings, err := f.applyQoS(e, q)
	if err != nil {
		return "", fmt.Errorf("vm %s: %w", name, err)
	}
	return "qos " + name + " set: " + describeQoS(settings), nil
}

func (f *fleet) applyQoS(e *vmEntry, q config.QoS) ([]setting, error) {
	settings, err := f.cg.settings(q)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.group != nil {
		if err := f.cg.apply(e.group, settings); err != nil {
			return nil, err
		}
	}
	e.qos = q
	return settings, nil
}

// threadAffinity reports where the kernel lets process pid's threads run,
// from /proc: "affinity vcpu0=2 vcpu1=3 other=0", grouping threads by
// name (the VMM names its vCPU threads), so that pinning is checked on
// the kernel's word rather than the VMM's.
func threadAffinity(pid int) string {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return ""
	}
	byName := map[string][]string{}
	var names []string
	for _, e := range ents {
		comm, err1 := os.ReadFile(filepath.Join(dir, e.Name(), "comm"))
		status, err2 := os.ReadFile(filepath.Join(dir, e.Name(), "status"))
		if err1 != nil || err2 != nil {
			continue // exited meanwhile
		}
		name := strings.TrimSpace(string(comm))
		if !strings.HasPrefix(name, "vcpu") {
			name = "other"
		}
		var cpus string
		for _, l := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
				cpus = strings.TrimSpace(v)
			}
		}
		if !slices.Contains(byName[name], cpus) {
			if byName[name] == nil {
				names = append(names, name)
			}
			byName[name] = append(byName[name], cpus)
		}
	}
	slices.Sort(names)
	w := []string{"affinity"}
	for _, n := range names {
		w = append(w, n+"="+strings.Join(byName[n], ";"))
	}
	return strings.Join(w, " ")
}

// describeQoS prints settings as "file=value" words.
func describeQoS(settings []setting) string {
	w := make([]string, len(settings))
	for i, s := range settings {
		sep := "/" // cpu.max's quota/period
		if strings.HasPrefix(s.file, "io.") {
			sep = "," // a device and its keys
		}
		w[i] = s.file + "=" + strings.ReplaceAll(s.value, " ", sep)
	}
	return strings.Join(w, " ")
}

// groupUsage is what a VMM's group uses: CPU time so far (for a rate, read
// twice and divide by the console lines' time stamps), memory and
// processes now.
func groupUsage(g *cgroup.Group) string {
	var w []string
	if d, err := g.CPUUsage(); err == nil {
		w = append(w, fmt.Sprintf("cpu.usage=%.3fs", d.Seconds()))
	}
	for _, file := range []string{"memory.current", "pids.current"} {
		if v, err := g.Get(file); err == nil {
			w = append(w, file+"="+v)
		}
	}
	if st, err := g.Get("memory.stat"); err == nil {
		w = append(w, memoryUsage(st)...)
	}
	// How often the group went past memory.high and memory.max, and how
	// long its tasks slept for it: a VM over its high mark is throttled,
	// not killed, and only these say so.
	if ev, err := g.Keyed("memory.events"); err == nil {
		for _, k := range []string{"high", "max", "oom_kill"} {
			w = append(w, fmt.Sprintf("memory.events.%s=%d", k, ev[k]))
		}
	}
	if d, err := g.Stalled("memory"); err == nil {
		w = append(w, fmt.Sprintf("memory.pressure.some=%.3fs", d.Seconds()))
	}
	if st, err := g.Get("io.stat"); err == nil {
		w = append(w, ioUsage(st)...)
	}
	return strings.Join(w, " ")
}

// memoryUsage splits memory.current as memory.stat does: shmem is guest
// RAM (its memfd; huge pages are not charged here), anon the VMM's Go heap
// and stacks, kernel what the kernel holds for the VMM (KVM's vCPU and VM
// structures, the guest's page tables, thread stacks). So what a VMM costs
// beyond its guest's RAM is memory.current less shmem.
func memoryUsage(stat string) []string {
	var w []string
	for _, line := range strings.Split(stat, "\n") {
		k, v, _ := strings.Cut(line, " ")
		switch k {
		case "shmem", "anon", "kernel":
			w = append(w, "memory.stat."+k+"="+v)
		}
	}
	return w
}

// ioUsage sums io.stat's per-device counters: requests and bytes read and
// written so far, all devices together ("io.rios=<n>" and so on).
func ioUsage(stat string) []string {
	var sum ioDevice
	for _, d := range parseIOStat(stat) {
		sum.rios += d.rios
		sum.wios += d.wios
		sum.rbytes += d.rbytes
		sum.wbytes += d.wbytes
	}
	return []string{fmt.Sprintf("io.rios=%d", sum.rios), fmt.Sprintf("io.wios=%d", sum.wios),
		fmt.Sprintf("io.rbytes=%d", sum.rbytes), fmt.Sprintf("io.wbytes=%d", sum.wbytes)}
}
