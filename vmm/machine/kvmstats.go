package machine

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/vmm/kvm"
)

// kvmStats are the statistics descriptors (KVM_GET_STATS_FD) of the VM and
// each of its vCPUs, for Dump: what KVM counted while it ran the guest,
// which the VMM never sees (exits it handled itself, page faults, injected
// interrupts, halts). They are opened at set-up because KVM serialises a
// vCPU's ioctls with KVM_RUN: a dump could not open one while the guest
// runs, but reading one never waits.
type kvmStats struct {
	mu  sync.Mutex // a VMM's reporter may read while Close closes
	fds []int      // the VM's, then each vCPU's in order; none in the zero value
	err error      // why there are none (a kernel before 5.14)
}

// open opens the descriptors of vm and vcpus; on error there are none.
func (s *kvmStats) open(vm *kvm.VM, vcpus []*kvm.VCPU) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fd, err := vm.StatsFD()
	if err != nil {
		s.err = err
		return
	}
	s.fds = []int{fd}
	for _, v := range vcpus {
		fd, err := v.StatsFD()
		if err != nil {
			s.closeLocked()
			s.err = err
			return
		}
		s.fds = append(s.fds, fd)
	}
}

func (s *kvmStats) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closeLocked()
}

func (s *kvmStats) closeLocked() error {
	var errs []error
	for _, fd := range s.fds {
		errs = append(errs, unix.Close(fd))
	}
	s.fds = nil
	return errors.Join(errs...)
}

// kvmSnapshot is every counter of the VM and its vCPUs at one moment.
type kvmSnapshot struct {
	at    time.Time
	vm    kvm.Stats
	vcpus []kvm.Stats
}

func (s *kvmStats) snapshot() (kvmSnapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.fds) == 0 {
		if s.err == nil {
			return kvmSnapshot{}, errors.New("no KVM statistics opened")
		}
		return kvmSnapshot{}, fmt.Errorf("no KVM statistics: %w", s.err)
	}
	snap := kvmSnapshot{at: time.Now()}
	var err error
	if snap.vm, err = kvm.ReadStats(s.fds[0]); err != nil {
		return kvmSnapshot{}, err
	}
	for _, fd := range s.fds[1:] {
		st, err := kvm.ReadStats(fd)
		if err != nil {
			return kvmSnapshot{}, err
		}
		snap.vcpus = append(snap.vcpus, st)
	}
	return snap, nil
}

// dumpCounters are the vCPU counters a dump shows as they stand: how the
// vCPU has been leaving the guest, the faults KVM handled for it and the
// interrupts it injected. The change over the dump shows every counter
// that moved.
var dumpCounters = []string{
	"exits", "io_exits", "mmio_exits", "halt_exits", "irq_exits", "irq_window_exits",
	"request_irq_exits", "signal_exits", "irq_injections", "nmi_injections",
	"halt_wakeup", "pf_taken", "pf_fixed", "pf_emulate", "pf_spurious", "pf_guest",
	"insn_emulation", "insn_emulation_fail", "nested_run", "guest_mode",
}

// counts formats the named counters of st, or every single-valued one
// when names is nil, leaving out zeros.
func counts(st kvm.Stats, names []string) string {
	var b strings.Builder
	add := func(name string, v uint64) {
		if v != 0 {
			fmt.Fprintf(&b, " %s=%d", name, v)
		}
	}
	if names == nil {
		for _, c := range st {
			if len(c.Values) == 1 {
				add(c.Name, c.Values[0])
			}
		}
	}
	for _, n := range names {
		v, _ := st.Get(n)
		add(n, v)
	}
	if b.Len() == 0 {
		return " none"
	}
	return b.String()
}

// moved formats the single-valued counters that changed from before to
// after (KVM keeps their order), with the change.
func moved(before, after kvm.Stats) string {
	var b strings.Builder
	for _, c := range after {
		if len(c.Values) != 1 {
			continue
		}
		was, _ := before.Get(c.Name)
		if d := int64(c.Values[0] - was); d != 0 {
			fmt.Fprintf(&b, " %s%+d", c.Name, d)
		}
	}
	if b.Len() == 0 {
		return " nothing moved"
	}
	return b.String()
}

// VCPUCounter returns KVM's counter name (single-valued) of each vCPU, 0
// where a vCPU lacks it. It errs where KVM has no statistics.
func (m *Machine) VCPUCounter(name string) ([]uint64, error) {
	snap, err := m.stats.snapshot()
	if err != nil {
		return nil, err
	}
	out := make([]uint64, len(snap.vcpus))
	for i, st := range snap.vcpus {
		out[i], _ = st.Get(name)
	}
	return out, nil
}

// KVMTotals sums, over the vCPUs, KVM's single-valued counters of them
// (exits and exits by cause, injected interrupts, page faults, halts): for
// the VMM's periodic report. It errs where KVM has no statistics.
func (m *Machine) KVMTotals() (map[string]uint64, error) {
	snap, err := m.stats.snapshot()
	if err != nil {
		return nil, err
	}
	sum := map[string]uint64{}
	for _, st := range snap.vcpus {
		for _, c := range st {
			if len(c.Values) == 1 {
				sum[c.Name] += c.Values[0]
			}
		}
	}
	return sum, nil
}
