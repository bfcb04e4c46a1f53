package netconf

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// A Linux bridge, made with the classic ioctls (the appliance has no `ip`
// command): SIOCBRADDBR, SIOCBRDELBR and SIOCBRADDIF on any socket. The
// appliance itself never uses one (its switch is userspace); the network
// benchmark puts QEMU's guests on one to compare.

// AddBridge creates the Linux bridge name (STP off, so ports forward as
// soon as they are up) and brings it up.
func AddBridge(name string) error {
	if len(name) >= unix.IFNAMSIZ {
		return fmt.Errorf("bridge %q: name longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	fd, err := ctlSocket()
	if err != nil {
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetString(fd, unix.SIOCBRADDBR, name); err != nil {
		return fmt.Errorf("bridge %s: SIOCBRADDBR (is the bridge module loaded?): %w", name, err)
	}
	if err := Up(name); err != nil {
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	return nil
}

// DeleteBridge takes bridge name down and deletes it (the kernel refuses
// to delete a bridge that is up).
func DeleteBridge(name string) error {
	if err := Down(name); err != nil {
		return fmt.Errorf("delete bridge: %w", err)
	}
	fd, err := ctlSocket()
	if err != nil {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetString(fd, unix.SIOCBRDELBR, name); err != nil {
		return fmt.Errorf("delete bridge %s: SIOCBRDELBR: %w", name, err)
	}
	return nil
}

// AddBridgePort makes interface port a port of bridge.
func AddBridgePort(bridge, port string) error {
	ifi, err := net.InterfaceByName(port)
	if err != nil {
		return fmt.Errorf("bridge %s: port %s: %w", bridge, port, err)
	}
	fd, err := ctlSocket()
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	ifr.SetUint32(uint32(ifi.Index))
	if err := unix.IoctlIfreq(fd, unix.SIOCBRADDIF, ifr); err != nil {
		return fmt.Errorf("bridge %s: add port %s: %w", bridge, port, err)
	}
	return nil
}
