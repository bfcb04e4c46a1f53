package main

import (
	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

// escapeHook, when not nil, is the escape suite's attacker (escape.go):
// code a guest that took its VMM over would run, built only into the test
// binary of tools/e2e's TestEscape (go build -tags escape), which an
// overlay puts in place of the image's /bin/hyperroot. The product binary
// has no such code. It runs at three stages of a VMM's start: "setup" (in
// the VMM's SELinux domain and namespaces, before the jail), "jailed" (in
// the jail, before the seccomp filters) and "running" (where the guest
// would run: every wall up). When the VM's command line names an attempt
// for this stage it makes it, reports it on stderr and returns the VMM's
// exit code with ran set.
var escapeHook func(stage string, a vmmcli.Args) (code int, ran bool)

// escapeAt runs escapeHook at stage, if there is one.
func escapeAt(stage string, a vmmcli.Args) (int, bool) {
	if escapeHook == nil {
		return 0, false
	}
	return escapeHook(stage, a)
}

// escapeTally, when not nil (the escape build: escape.go), counts the
// escape suite's attempts on the appliance's console: it is told the
// configured VMs (the attackers among them), sees every console line as
// it is written, and before a oneshot run's verdict prints which wall
// denied each attempt and the count, "escape: k/n attempts denied".
var escapeTally interface {
	Expect(vms []config.VM)
	Line(line string)
	Report(c *console)
}
