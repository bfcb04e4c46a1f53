package seccomp

import (
	"fmt"
	"runtime"
	"unsafe"

	seccompbpf "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The policies are written with go-seccomp-bpf's types and its system call
// tables, but assembled here into one classic BPF program per filter: the
// program that library assembles is wrong for an allowlist with argument
// conditions (once it has loaded an argument to test a call's conditions
// and they fail, it goes on comparing the next entries' system call numbers
// with that argument: the VMM's process filter let mmap(1, 4096, 317, ...)
// map executable memory, 317 being seccomp's number), and working around it
// with a stack of programs, one per conditional call, cost every KVM_RUN
// thirteen programs (500 ns on a host, a sixth of an exit under nested TCG).
//
// The program compile builds:
//
//	load arch; not x86_64 -> deny
//	load nr
//	nr == a ? -> allow          one test per call, in the policy's order
//	nr == b ? -> block b        (a call with conditions has a block)
//	...
//	deny
//	allow
//	block b: its conditions, each jumping to the block's own allow;
//	         deny when none holds
//
// Only a call's block loads its arguments, so the kernel's per-call cache
// (which lets a call every filter allows whatever its arguments skip the
// filters altogether) holds the unconditional calls, and the hottest call
// with conditions, KVM_RUN's ioctl, is decided in a handful of
// instructions when it is first in the policy.

// The offsets of struct seccomp_data's fields (linux/seccomp.h), and the
// low and high words of an argument on a little-endian machine.
const (
	offNr   = 0
	offArch = 4
	offArgs = 16
)

func argLo(i int) uint32 { return offArgs + 8*uint32(i) }
func argHi(i int) uint32 { return offArgs + 8*uint32(i) + 4 }

// x32Bit marks a call made through the x32 ABI, which no Go program uses.
// The programs need no test of it: a call is allowed only when its number
// equals one of x86_64's, all below it.
const x32Bit = 0x4000_0000

// rule is one system call a policy allows: whatever its arguments, or when
// any one of its condition sets holds (each set a conjunction).
type rule struct {
	name string
	nr   uint32
	any  bool
	sets []seccompbpf.ArgumentConditions
}

// rules merges p's groups into one rule per system call, in the order the
// calls first appear; every group must allow.
func rules(p seccompbpf.Policy) ([]*rule, error) {
	byName := map[string]*rule{}
	var out []*rule
	get := func(name string) (*rule, error) {
		if r, ok := byName[name]; ok {
			return r, nil
		}
		nr, ok := arch.X86_64.SyscallNames[name]
		if !ok {
			return nil, fmt.Errorf("seccomp: no system call %q on x86_64", name)
		}
		r := &rule{name: name, nr: uint32(nr)}
		byName[name] = r
		out = append(out, r)
		return r, nil
	}
	for _, g := range p.Syscalls {
		if g.Action != seccompbpf.ActionAllow {
			return nil, fmt.Errorf("seccomp: a group with action %s: only allowlists are assembled", g.Action)
		}
		// A group's conditional calls and unconditional ones are
		// tested in the order the group lists them, conditional first
		// (the policies put KVM_RUN's ioctl there).
		for _, c := range g.NamesWithCondtions {
			r, err := get(c.Name)
			if err != nil {
				return nil, err
			}
			if len(c.Conditions) == 0 {
				r.any = true
				continue
			}
			for _, cond := range c.Conditions {
				if cond.Argument > 5 {
					return nil, fmt.Errorf("seccomp: %s: argument %d", c.Name, cond.Argument)
				}
				if _, ok := condOps[cond.Operation]; !ok {
					return nil, fmt.Errorf("seccomp: %s: operation %s is not assembled", c.Name, cond.Operation)
				}
			}
			r.sets = append(r.sets, c.Conditions)
		}
		for _, n := range g.Names {
			r, err := get(n)
			if err != nil {
				return nil, err
			}
			r.any = true
		}
	}
	return out, nil
}

// condOps are the operations a condition may use.
var condOps = map[seccompbpf.Operation]bool{
	seccompbpf.Equal: true, seccompbpf.NotEqual: true,
	seccompbpf.BitsSet: true, seccompbpf.BitsNotSet: true,
}

// asm is a program under construction whose jumps name labels, resolved
// by finish.
type asm struct {
	ins    []bpf.Instruction
	jumps  []jump
	labels []int // label -> instruction index, -1 until placed
}

type jump struct {
	at      int
	yes, no int // labels; next means the following instruction
	cond    bpf.JumpTest
	val     uint32
}

const next = -1

func (a *asm) label() int  { a.labels = append(a.labels, -1); return len(a.labels) - 1 }
func (a *asm) place(l int) { a.labels[l] = len(a.ins) }
func (a *asm) load(off uint32) {
	a.ins = append(a.ins, bpf.LoadAbsolute{Off: off, Size: 4})
}
func (a *asm) ret(v uint32) { a.ins = append(a.ins, bpf.RetConstant{Val: v}) }

// jif tests A against val: to yes when cond holds, else to no.
func (a *asm) jif(cond bpf.JumpTest, val uint32, yes, no int) {
	a.jumps = append(a.jumps, jump{at: len(a.ins), cond: cond, val: val, yes: yes, no: no})
	a.ins = append(a.ins, nil)
}

// finish resolves the jumps. Classic BPF jumps only forward, by at most 255
// instructions on a condition.
func (a *asm) finish() ([]bpf.Instruction, error) {
	skip := func(from, l int) (uint8, error) {
		if l == next {
			return 0, nil
		}
		to := a.labels[l]
		if to < 0 {
			return 0, fmt.Errorf("seccomp: label %d never placed", l)
		}
		d := to - from - 1
		if d < 0 || d > 255 {
			return 0, fmt.Errorf("seccomp: a jump of %d instructions from %d", d, from)
		}
		return uint8(d), nil
	}
	for _, j := range a.jumps {
		yes, err := skip(j.at, j.yes)
		if err != nil {
			return nil, err
		}
		no, err := skip(j.at, j.no)
		if err != nil {
			return nil, err
		}
		a.ins[j.at] = bpf.JumpIf{Cond: j.cond, Val: j.val, SkipTrue: yes, SkipFalse: no}
	}
	return a.ins, nil
}

// compile assembles p into one program (see the top of this file).
func compile(p seccompbpf.Policy) ([]bpf.Instruction, error) {
	rs, err := rules(p)
	if err != nil {
		return nil, err
	}
	deny, allow := uint32(p.DefaultAction), uint32(seccompbpf.ActionAllow)
	var a asm
	lDeny, lAllow := a.label(), a.label()
	a.load(offArch)
	a.jif(bpf.JumpEqual, uint32(arch.X86_64.ID), next, lDeny)
	a.load(offNr)
	blocks := make([]int, len(rs))
	for i, r := range rs {
		target := lAllow
		if !r.any {
			blocks[i] = a.label()
			target = blocks[i]
		}
		a.jif(bpf.JumpEqual, r.nr, target, next)
	}
	a.place(lDeny)
	a.ret(deny)
	a.place(lAllow)
	a.ret(allow)
	for i, r := range rs {
		if r.any {
			continue
		}
		a.place(blocks[i])
		a.conditions(r.sets, deny, allow)
	}
	return a.finish()
}

// conditions assembles a call's block: allow when any set holds, else deny.
// Equal conditions alone in their set, on one argument with one high word,
// share one test of that word and then compare the low word in a row (a
// KVM ioctl's list of requests).
func (a *asm) conditions(sets []seccompbpf.ArgumentConditions, deny, allow uint32) {
	lAllow := a.label()
	for i := 0; i < len(sets); {
		c := sets[i]
		if len(c) == 1 && c[0].Operation == seccompbpf.Equal {
			// The run of single Equal conditions on the same word.
			j := i + 1
			for j < len(sets) && len(sets[j]) == 1 && sets[j][0].Operation == seccompbpf.Equal &&
				sets[j][0].Argument == c[0].Argument && sets[j][0].Value>>32 == c[0].Value>>32 {
				j++
			}
			lNext := a.label()
			arg := int(c[0].Argument)
			a.load(argHi(arg))
			a.jif(bpf.JumpEqual, uint32(c[0].Value>>32), next, lNext)
			a.load(argLo(arg))
			for _, s := range sets[i:j] {
				a.jif(bpf.JumpEqual, uint32(s[0].Value), lAllow, next)
			}
			a.place(lNext)
			i = j
			continue
		}
		// A set of any conditions: each must hold to reach the next.
		lNext := a.label()
		for k, cond := range c {
			hold := next
			if k == len(c)-1 {
				hold = lAllow
			}
			a.condition(cond, hold, lNext)
		}
		a.place(lNext)
		i++
	}
	a.ret(deny)
	a.place(lAllow)
	a.ret(allow)
}

// condition tests one argument condition: to hold when it holds, else to
// fail. The high word is tested only where the value has one.
func (a *asm) condition(c seccompbpf.Condition, hold, fail int) {
	arg := int(c.Argument)
	hi, lo := uint32(c.Value>>32), uint32(c.Value)
	switch c.Operation {
	case seccompbpf.Equal: // both words equal
		a.load(argHi(arg))
		a.jif(bpf.JumpEqual, hi, next, fail)
		a.load(argLo(arg))
		a.jif(bpf.JumpEqual, lo, hold, fail)
	case seccompbpf.NotEqual: // either word differs
		a.load(argHi(arg))
		a.jif(bpf.JumpEqual, hi, next, hold)
		a.load(argLo(arg))
		a.jif(bpf.JumpEqual, lo, fail, hold)
	case seccompbpf.BitsSet: // any of the bits set (go-seccomp-bpf's meaning)
		if hi != 0 {
			a.load(argHi(arg))
			a.jif(bpf.JumpBitsSet, hi, hold, next)
		}
		a.load(argLo(arg))
		a.jif(bpf.JumpBitsSet, lo, hold, fail)
	case seccompbpf.BitsNotSet: // none of the bits set
		if hi != 0 {
			a.load(argHi(arg))
			a.jif(bpf.JumpBitsSet, hi, fail, next)
		}
		a.load(argLo(arg))
		a.jif(bpf.JumpBitsSet, lo, fail, hold)
	}
}

// load assembles p and loads it on the calling thread, or with tsync on
// every thread of the process; with nnp it sets no_new_privs first.
func load(p seccompbpf.Policy, tsync, nnp bool) error {
	prog, err := compile(p)
	if err != nil {
		return err
	}
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return err
	}
	filter := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		filter[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	// no_new_privs is per thread: set it on the thread that loads.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if nnp {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("no_new_privs: %w", err)
		}
	}
	var flags uintptr
	if tsync {
		flags = unix.SECCOMP_FILTER_FLAG_TSYNC
	}
	r, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(filter)
	if e != 0 {
		return fmt.Errorf("seccomp(SET_MODE_FILTER): %w", e)
	}
	if tsync && r != 0 {
		return fmt.Errorf("seccomp: thread %d could not take the filter", r)
	}
	return nil
}
