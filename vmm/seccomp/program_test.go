package seccomp

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	seccompbpf "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// call is one system call as a filter sees it (struct seccomp_data).
type call struct {
	arch uint32
	nr   uint32
	args [6]uint64
}

// bytes lays c out for x/net/bpf's VM, which loads words big-endian: each
// 32-bit word of seccomp_data is written big-endian at its offset, so the
// VM reads what the kernel reads on this little-endian machine.
func (c call) bytes() []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[offNr:], c.nr)
	binary.BigEndian.PutUint32(b[offArch:], c.arch)
	for i, v := range c.args {
		binary.BigEndian.PutUint32(b[argLo(i):], uint32(v))
		binary.BigEndian.PutUint32(b[argHi(i):], uint32(v>>32))
	}
	return b
}

// judge reads p directly: what its filter must answer for c.
func judge(p seccompbpf.Policy, c call) uint32 {
	if c.arch != uint32(arch.X86_64.ID) || c.nr >= x32Bit {
		return uint32(p.DefaultAction)
	}
	name := arch.X86_64.SyscallNumbers[int(c.nr)]
	for _, g := range p.Syscalls {
		for _, n := range g.Names {
			if n == name {
				return uint32(g.Action)
			}
		}
		for _, nc := range g.NamesWithCondtions {
			if nc.Name == name && holds(nc.Conditions, c) {
				return uint32(g.Action)
			}
		}
	}
	return uint32(p.DefaultAction)
}

func holds(set seccompbpf.ArgumentConditions, c call) bool {
	for _, cond := range set {
		v := c.args[cond.Argument]
		var ok bool
		switch cond.Operation {
		case seccompbpf.Equal:
			ok = v == cond.Value
		case seccompbpf.NotEqual:
			ok = v != cond.Value
		case seccompbpf.BitsSet:
			ok = v&cond.Value != 0
		case seccompbpf.BitsNotSet:
			ok = v&cond.Value == 0
		}
		if !ok {
			return false
		}
	}
	return true
}

// policies are the product's, in both modes, and one exercising every
// operation, conjunctions and a call both conditional and not.
func policies() map[string]seccompbpf.Policy {
	p := map[string]seccompbpf.Policy{}
	for _, m := range []Mode{Kill, Log} {
		proc, vcpu := Policies(m, Options{})
		p["process-"+m.String()] = proc
		p["vcpu-"+m.String()] = vcpu
		p["switch-"+m.String()] = SwitchPolicy(m)
		proc, vcpu = Policies(m, Options{Passthrough: true})
		p["process-passthrough-"+m.String()] = proc
		p["vcpu-passthrough-"+m.String()] = vcpu
	}
	p["operations"] = seccompbpf.Policy{DefaultAction: seccompbpf.ActionErrno, Syscalls: []seccompbpf.SyscallGroup{{
		Action: seccompbpf.ActionAllow, Names: []string{"read", "close"},
		NamesWithCondtions: []seccompbpf.NameWithConditions{
			{Name: "mmap", Conditions: seccompbpf.ArgumentConditions{
				{Argument: 2, Operation: seccompbpf.BitsNotSet, Value: 1<<40 | 4},
				{Argument: 0, Operation: seccompbpf.NotEqual, Value: 7<<32 | 9}}},
			{Name: "mmap", Conditions: seccompbpf.ArgumentConditions{{Argument: 5, Operation: seccompbpf.BitsSet, Value: 1<<33 | 1}}},
			{Name: "ioctl", Conditions: seccompbpf.ArgumentConditions{{Argument: 1, Operation: seccompbpf.Equal, Value: 5}}},
			{Name: "ioctl", Conditions: seccompbpf.ArgumentConditions{{Argument: 1, Operation: seccompbpf.Equal, Value: 6}}},
			{Name: "ioctl", Conditions: seccompbpf.ArgumentConditions{{Argument: 1, Operation: seccompbpf.Equal, Value: 1<<32 | 6}}},
			{Name: "ioctl", Conditions: seccompbpf.ArgumentConditions{{Argument: 2, Operation: seccompbpf.Equal, Value: 6}}},
			{Name: "close", Conditions: seccompbpf.ArgumentConditions{{Argument: 0, Operation: seccompbpf.Equal, Value: 3}}},
			{Name: "fcntl", Conditions: seccompbpf.ArgumentConditions{
				{Argument: 1, Operation: seccompbpf.Equal, Value: 1<<32 | 3},
				{Argument: 2, Operation: seccompbpf.BitsSet, Value: 2}}},
		}}}}
	return p
}

// interesting are argument values near the policies' constants.
func interesting(p seccompbpf.Policy) []uint64 {
	vals := []uint64{0, 1, 1 << 32, ^uint64(0)}
	for _, g := range p.Syscalls {
		for _, nc := range g.NamesWithCondtions {
			for _, c := range nc.Conditions {
				v := c.Value
				vals = append(vals, v, v+1, v-1, v|1<<32, v&0xffff_ffff, v&^0xffff_ffff, v^1, v^1<<32, ^v)
			}
		}
	}
	return vals
}

func vmFor(t testing.TB, p seccompbpf.Policy) *bpf.VM {
	t.Helper()
	prog, err := compile(p)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

func run(t testing.TB, vm *bpf.VM, c call) uint32 {
	t.Helper()
	got, err := vm.Run(c.bytes())
	if err != nil {
		t.Fatalf("%+v: %v", c, err)
	}
	return uint32(got)
}

// TestProgram runs each compiled program on every system call with
// arguments drawn from the values its conditions name, and on the
// disguised mmap that fooled go-seccomp-bpf's own program, and compares its
// answer with judge's.
func TestProgram(t *testing.T) {
	for name, p := range policies() {
		t.Run(name, func(t *testing.T) {
			vm := vmFor(t, p)
			vals := interesting(p)
			r := rand.New(rand.NewPCG(1, 2))
			checked := 0
			conditional := map[string]bool{}
			for _, g := range p.Syscalls {
				for _, nc := range g.NamesWithCondtions {
					conditional[nc.Name] = true
				}
			}
			for nr, name := range arch.X86_64.SyscallNumbers {
				n := 16
				if conditional[name] {
					n = 8192 // every value in each argument, many times over
				}
				for k := 0; k < n; k++ {
					c := call{arch: uint32(arch.X86_64.ID), nr: uint32(nr)}
					for i := range c.args {
						c.args[i] = vals[r.IntN(len(vals))]
					}
					if got, want := run(t, vm, c), judge(p, c); got != want {
						t.Fatalf("%s(%#x): filter says %#x, policy %#x", arch.X86_64.SyscallNumbers[nr], c.args, got, want)
					}
					checked++
				}
			}
			for _, c := range []call{
				{arch: uint32(arch.X86_64.ID), nr: unix.SYS_MMAP, args: [6]uint64{1, 4096, 317, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS, ^uint64(0)}},
				{arch: uint32(arch.I386.ID), nr: unix.SYS_READ},
				{arch: uint32(arch.X86_64.ID), nr: x32Bit | unix.SYS_READ},
				{arch: uint32(arch.X86_64.ID), nr: 5000},
			} {
				if got, want := run(t, vm, c), judge(p, c); got != want {
					t.Errorf("%+v: filter says %#x, policy %#x", c, got, want)
				}
			}
			t.Logf("%d calls checked", checked)
		})
	}
}

// TestPassthroughSlots: only a machine with passed-through devices may
// change its memory slots once it runs (a BAR's pages following the BAR),
// on either thread role.
func TestPassthroughSlots(t *testing.T) {
	const setUserMemoryRegion = 0x4020ae46 // _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)
	c := call{arch: uint32(arch.X86_64.ID), nr: unix.SYS_IOCTL, args: [6]uint64{5, setUserMemoryRegion}}
	for _, passthrough := range []bool{false, true} {
		proc, vcpu := Policies(Kill, Options{Passthrough: passthrough})
		for name, p := range map[string]seccompbpf.Policy{"process": proc, "vcpu": vcpu} {
			allowed := run(t, vmFor(t, p), c) == uint32(seccompbpf.ActionAllow)
			if allowed != passthrough {
				t.Errorf("%s filter, passthrough %v: KVM_SET_USER_MEMORY_REGION allowed = %v", name, passthrough, allowed)
			}
		}
	}
}

// TestKVMRunShort holds the point of assembling the programs ourselves:
// KVM_RUN, the call every exit makes, is decided in a few instructions by
// each of the VMM's filters.
func TestKVMRunShort(t *testing.T) {
	proc, vcpu := Policies(Kill, Options{})
	for name, p := range map[string]seccompbpf.Policy{"process": proc, "vcpu": vcpu} {
		prog, err := compile(p)
		if err != nil {
			t.Fatal(err)
		}
		c := call{arch: uint32(arch.X86_64.ID), nr: unix.SYS_IOCTL, args: [6]uint64{5, kvm0xae80}}
		steps, verdict := trace(prog, c)
		if verdict != uint32(seccompbpf.ActionAllow) || steps > 10 {
			t.Errorf("%s filter: KVM_RUN took %d instructions to %#x, want allowed within 10", name, steps, verdict)
		}
		t.Logf("%s filter: %d instructions, KVM_RUN allowed after %d", name, len(prog), steps)
	}
}

// trace steps through prog on c (loads, conditional jumps and returns,
// all compile emits) and says how many instructions ran.
func trace(prog []bpf.Instruction, c call) (steps int, verdict uint32) {
	in := c.bytes()
	var a uint32
	for pc := 0; pc < len(prog); pc++ {
		steps++
		switch i := prog[pc].(type) {
		case bpf.LoadAbsolute:
			a = binary.BigEndian.Uint32(in[i.Off:])
		case bpf.JumpIf:
			var ok bool
			switch i.Cond {
			case bpf.JumpEqual:
				ok = a == i.Val
			case bpf.JumpGreaterOrEqual:
				ok = a >= i.Val
			case bpf.JumpBitsSet:
				ok = a&i.Val != 0
			}
			if ok {
				pc += int(i.SkipTrue)
			} else {
				pc += int(i.SkipFalse)
			}
		case bpf.RetConstant:
			return steps, i.Val
		}
	}
	return steps, 0
}

// FuzzProgram checks the compiled programs against judge on any call.
func FuzzProgram(f *testing.F) {
	f.Add(uint8(0), uint32(unix.SYS_IOCTL), uint64(5), uint64(kvm0xae80), uint64(0), false)
	f.Add(uint8(0), uint32(unix.SYS_MMAP), uint64(1), uint64(4096), uint64(317), false)
	f.Add(uint8(2), uint32(unix.SYS_FCNTL), uint64(3), uint64(unix.F_SETFL), uint64(0), false)
	f.Add(uint8(6), uint32(unix.SYS_MMAP), uint64(0), uint64(1<<32|9), uint64(4), true)
	names := []string{"process-kill", "vcpu-kill", "switch-kill", "process-log", "vcpu-log", "switch-log", "operations"}
	ps := policies()
	vms := map[string]*bpf.VM{}
	for _, n := range names {
		vms[n] = vmFor(f, ps[n])
	}
	f.Fuzz(func(t *testing.T, which uint8, nr uint32, a0, a1, a2 uint64, i386 bool) {
		n := names[int(which)%len(names)]
		c := call{arch: uint32(arch.X86_64.ID), nr: nr, args: [6]uint64{a0, a1, a2, a0 ^ a1, a1 ^ a2, a2 ^ a0}}
		if i386 {
			c.arch = uint32(arch.I386.ID)
		}
		if got, want := run(t, vms[n], c), judge(ps[n], c); got != want {
			t.Fatalf("%s: %+v: filter says %#x, policy %#x", n, c, got, want)
		}
	})
}
