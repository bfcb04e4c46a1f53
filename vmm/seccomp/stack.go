package seccomp

import (
	"fmt"

	bpf "github.com/elastic/go-seccomp-bpf"
)

// The filters are loaded as a stack of programs rather than the one program
// go-seccomp-bpf assembles from a policy, because that program is wrong for
// an allowlist with argument conditions: once it has loaded an argument to
// test a call's conditions and they fail, it goes on comparing the next
// entries' system call numbers with that argument instead of the number.
// A call whose argument happens to equal the number of a later entry is
// then judged by that entry's conditions, against its own arguments: the
// VMM's process filter let mmap(1, 4096, 317, ...) map executable memory
// (317 has PROT_EXEC set, fails mmap's condition, and is seccomp's number;
// the address 1 is SECCOMP_SET_MODE_FILTER, which seccomp's condition
// allows). stack avoids the flaw: the kernel runs every program of a stack
// on each call and applies the most restrictive answer, so each conditional
// system call gets a program of its own, where its number is the only one
// compared and is compared before any argument is loaded.

// stack turns p into programs with the same meaning: one with p's groups
// where each conditional entry is allowed whatever its arguments, and, for
// each system call allowed only under conditions, one that applies p's
// default action to that call when its arguments meet none of them, and
// allows everything else. It handles the policies of this package: groups
// that allow, each condition set a single condition (whose negation is
// again one condition).
func stack(p bpf.Policy) ([]bpf.Policy, error) {
	main := bpf.Policy{DefaultAction: p.DefaultAction}
	unconditional := map[string]bool{}
	conditions := map[string][]bpf.Condition{} // by call: any one allows
	var order []string
	for _, g := range p.Syscalls {
		if g.Action != bpf.ActionAllow {
			return nil, fmt.Errorf("seccomp: a group with action %s: only allowlists are stacked", g.Action)
		}
		names := append([]string(nil), g.Names...)
		for _, n := range g.Names {
			unconditional[n] = true
		}
		for _, c := range g.NamesWithCondtions {
			if len(c.Conditions) != 1 {
				return nil, fmt.Errorf("seccomp: %s: %d conditions in one set; one is supported", c.Name, len(c.Conditions))
			}
			if _, ok := negations[c.Conditions[0].Operation]; !ok {
				return nil, fmt.Errorf("seccomp: %s: operation %s has no negation", c.Name, c.Conditions[0].Operation)
			}
			if _, seen := conditions[c.Name]; !seen {
				order = append(order, c.Name)
				names = append(names, c.Name)
			}
			conditions[c.Name] = append(conditions[c.Name], c.Conditions[0])
		}
		main.Syscalls = append(main.Syscalls, bpf.SyscallGroup{Action: bpf.ActionAllow, Names: names})
	}
	out := []bpf.Policy{main}
	for _, name := range order {
		if unconditional[name] {
			continue // allowed whatever its arguments by another entry
		}
		var none bpf.ArgumentConditions // all conditions fail: the call is refused
		for _, c := range conditions[name] {
			c.Operation = negations[c.Operation]
			none = append(none, c)
		}
		out = append(out, bpf.Policy{DefaultAction: bpf.ActionAllow, Syscalls: []bpf.SyscallGroup{{
			Action: p.DefaultAction, NamesWithCondtions: []bpf.NameWithConditions{{Name: name, Conditions: none}},
		}}})
	}
	return out, nil
}

// negations are the operations that hold exactly when the key does not.
var negations = map[bpf.Operation]bpf.Operation{
	bpf.Equal: bpf.NotEqual, bpf.NotEqual: bpf.Equal,
	bpf.BitsSet: bpf.BitsNotSet, bpf.BitsNotSet: bpf.BitsSet,
	bpf.GreaterThan: bpf.LessOrEqual, bpf.LessOrEqual: bpf.GreaterThan,
	bpf.LessThan: bpf.GreaterOrEqual, bpf.GreaterOrEqual: bpf.LessThan,
}

// load loads p as its stack of programs on the calling thread, or with
// tsync on every thread of the process; with nnp it sets no_new_privs
// first. The programs that guard one call's arguments go first and the
// main one last: each program loaded judges the seccomp(2) calls that load
// the next ones, and only the main one refuses calls by their number (the
// switch's refuses seccomp itself); no_new_privs is set before any of them
// (a VMM's guard refuses prctl but for naming a thread).
func load(p bpf.Policy, tsync, nnp bool) error {
	progs, err := stack(p)
	if err != nil {
		return err
	}
	var flag bpf.FilterFlag
	if tsync {
		flag = bpf.FilterFlagTSync
	}
	progs = append(progs[1:], progs[0])
	for i, prog := range progs {
		if err := bpf.LoadFilter(bpf.Filter{NoNewPrivs: nnp && i == 0, Flag: flag, Policy: prog}); err != nil {
			return err
		}
	}
	return nil
}
