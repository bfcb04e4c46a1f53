package main

import (
	"fmt"
	"net"
	"time"

	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/vmm/machine"
)

// machineNIC is the NIC of a --nic flag as the machine takes it. The first
// connection is retried for a few seconds, since the switch may still be
// creating the socket when a VM starts with it.
func machineNIC(n vmmcli.NIC) machine.NIC {
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
