package main

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/hyperroot/hyperroot/net/vswitch"
)

// claims6File, in the switch's directory, keeps the IPv6 addresses the
// switch's locked ports have claimed (first come, first served: see
// vswitch's police6), one "<port> <address>" line per claim. The directory
// is tmpfs: the file lives as long as the appliance, so that a switch
// restarted by its supervisor gives each port its addresses back before a
// neighbour can take one, as the DHCP lease files do for IPv4.
const claims6File = "claims6"

// maxClaimLines bounds what restore keeps of the file per port: a port
// holds at most a few claims at a time (vswitch's maxV6Claims), the most
// recent ones last in the file.
const maxClaimLines = 16

// claims6 appends the claims the switch reports to the file, off the
// forwarding path.
type claims6 struct {
	path string
	logf func(string, ...any)
	add  chan string
}

func openClaims6(path string, logf func(string, ...any)) *claims6 {
	c := &claims6{path: path, logf: logf, add: make(chan string, 256)}
	go c.write()
	return c
}

// claimed is vswitch.Options.Claimed6: it must not block, so a claim that
// finds the queue full is not recorded (it is made again when the guest
// sends after a restart, if no neighbour took it first).
func (c *claims6) claimed(p *vswitch.VirtioPort, addr netip.Addr) {
	select {
	case c.add <- p.Name() + " " + addr.String() + "\n":
	default:
	}
}

func (c *claims6) write() {
	for line := range c.add {
		f, err := os.OpenFile(c.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			c.logf("ipv6 claims: %v", err)
			continue
		}
		f.WriteString(line)
		f.Close()
	}
}

// restore gives each port the claims its previous run recorded (the
// latest maxClaimLines per port, oldest first) and rewrites the file with
// those that still hold. Unknown ports (a VM no longer configured) and
// malformed lines are dropped.
func (c *claims6) restore(ports map[string]*vswitch.VirtioPort) {
	f, err := os.Open(c.path)
	if err != nil {
		return // none yet
	}
	byPort := map[string][]netip.Addr{}
	var order []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, a, ok := strings.Cut(sc.Text(), " ")
		addr, err := netip.ParseAddr(a)
		if !ok || err != nil || ports[name] == nil {
			continue
		}
		if byPort[name] == nil {
			order = append(order, name)
		}
		list := append(byPort[name], addr)
		if len(list) > maxClaimLines {
			list = list[1:]
		}
		byPort[name] = list
	}
	f.Close()
	var kept strings.Builder
	n := 0
	for _, name := range order {
		for _, addr := range byPort[name] {
			if ports[name].Claim6(addr) {
				fmt.Fprintf(&kept, "%s %s\n", name, addr)
				n++
			}
		}
	}
	if err := os.WriteFile(c.path, []byte(kept.String()), 0o600); err != nil {
		c.logf("ipv6 claims: %v", err)
	}
	if n > 0 {
		c.logf("ipv6 claims: %d restored", n)
	}
}
