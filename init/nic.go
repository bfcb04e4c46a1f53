package main

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/vmm/machine"
)

// nicSpec is a --nic flag of `hyperroot vmm`: a virtio-net interface whose
// frames a vhost-user backend listening on Socket moves.
type nicSpec struct {
	Socket string
	MAC    net.HardwareAddr
	MTU    int // 0: not announced to the guest
}

// parseNICSpec reads a --nic flag: socket=PATH,mac=XX:XX:XX:XX:XX:XX[,mtu=N].
func parseNICSpec(s string) (nicSpec, error) {
	var n nicSpec
	seen := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(f, "=")
		if !ok || v == "" {
			return n, fmt.Errorf("%q: want key=value (keys: socket, mac, mtu)", f)
		}
		if seen[k] {
			return n, fmt.Errorf("%s given twice", k)
		}
		seen[k] = true
		switch k {
		case "socket":
			if !strings.HasPrefix(v, "/") {
				return n, fmt.Errorf("socket %q: want an absolute path", v)
			}
			n.Socket = v
		case "mac":
			mac, err := net.ParseMAC(v)
			if err != nil || len(mac) != 6 || mac[0]&1 != 0 {
				return n, fmt.Errorf("mac %q: want a unicast Ethernet address such as 52:54:00:12:34:56", v)
			}
			n.MAC = mac
		case "mtu":
			m, err := strconv.Atoi(v)
			if err != nil || m < 68 || m > 65535 {
				return n, fmt.Errorf("mtu %q: want 68 to 65535", v)
			}
			n.MTU = m
		default:
			return n, fmt.Errorf("unknown key %q (keys: socket, mac, mtu)", k)
		}
	}
	if n.Socket == "" || n.MAC == nil {
		return n, errors.New("want socket=PATH and mac=ADDRESS")
	}
	return n, nil
}

// nicArg is the --nic flag for a NIC served on socket with address mac.
func nicArg(socket string, mac net.HardwareAddr) string {
	return fmt.Sprintf("socket=%s,mac=%s", socket, mac)
}

// configNICArg is the --nic flag for configured NIC n served on socket:
// its MAC and its network's MTU.
func configNICArg(socket string, n config.NIC) string {
	s := nicArg(socket, n.MAC)
	if n.MTU > 0 {
		s += fmt.Sprintf(",mtu=%d", n.MTU)
	}
	return s
}

// machineNIC is the NIC as the machine takes it. The first connection is
// retried for a few seconds, since the switch may still be creating the
// socket when a VM starts with it.
func (n nicSpec) machineNIC() machine.NIC {
	patience := 5 * time.Second // for the first connection only
	return machine.NIC{MAC: n.MAC, MTU: n.MTU, Dial: func() (*net.UnixConn, error) {
		deadline := time.Now().Add(patience)
		patience = 0
		for {
			c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: n.Socket, Net: "unix"})
			if err == nil {
				return c, nil
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("vhost-user socket %s: %w", n.Socket, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}}
}

// nicFlags collects repeated --nic flags.
type nicFlags []string

func (f *nicFlags) String() string     { return strings.Join(*f, " ") }
func (f *nicFlags) Set(s string) error { *f = append(*f, s); return nil }
