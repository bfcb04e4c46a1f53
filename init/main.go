// Command hyperroot is the whole appliance: run as PID 1 (/init) it is the
// supervisor that brings the machine up and runs the VMs; run with a
// subcommand it is one of the roles the supervisor starts (or a user runs by
// hand on any Linux host).
package main

import (
	"fmt"
	"os"

	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

// switchCommand is the switch's subcommand.
const switchCommand = "switch"

// version is set at build time (-ldflags -X main.version=...).
var version = "dev"

func main() {
	// A jailed VMM or switch is PID 1 too, of a PID namespace of its own:
	// the supervisor is the one started without either subcommand (the
	// kernel may pass /init words of its command line as arguments).
	if os.Getpid() == 1 && (len(os.Args) < 2 || os.Args[1] != vmmcli.Command && os.Args[1] != switchCommand) {
		supervise() // never returns
	}
	os.Exit(dispatch(os.Args[1:]))
}

func dispatch(args []string) int {
	if len(args) == 0 {
		usage()
		return 2
	}
	switch args[0] {
	case "version", "--version":
		fmt.Println("hyperroot", version)
		return 0
	case vmmcli.Command:
		return vmmMain(args[1:])
	case switchCommand:
		return switchMain(args[1:])
	case "ctl":
		return ctlMain(args[1:])
	case "help", "-h", "--help":
		usage()
		return 0
	}
	fmt.Fprintf(os.Stderr, "hyperroot: unknown command %q\n", args[0])
	usage()
	return 2
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: hyperroot <command> [flags]

As PID 1 (the appliance's /init) hyperroot is the supervisor and takes no
arguments. Commands:
  vmm       run one VM: hyperroot vmm --kernel K [--initrd I] [--cmdline C] [--cpus N] [--memory SIZE]
  switch    run the virtio-net switch of a configuration: hyperroot switch --config FILE
  ctl       the management API's client, for root on the appliance: hyperroot ctl `+ctlUsage+`
  version   print the version
  help      this text
`)
}
