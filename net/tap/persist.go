package tap

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// AddPersistent creates tap device name with flags (IFF_TAP|IFF_NO_PI and
// whatever the program that will attach to it asks for, such as
// IFF_VNET_HDR) and makes it persistent: it outlives its descriptor, so
// that another program (QEMU) can attach to it by name, for instance while
// it is already a bridge port.
func AddPersistent(name string, flags uint16) error { return setPersist(name, flags, true) }

// DeletePersistent clears the persistence of tap device name, made with
// flags, which deletes it.
func DeletePersistent(name string, flags uint16) error { return setPersist(name, flags, false) }

// setPersist attaches to tap name (creating it if needed) and sets or
// clears its persistence; clearing it deletes the tap when the descriptor
// closes.
func setPersist(name string, flags uint16, persist bool) error {
	if len(name) >= unix.IFNAMSIZ {
		return fmt.Errorf("tap %q: name longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("tap %s: /dev/net/tun (is the tun module loaded?): %w", name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("tap %s: TUNSETIFF: %w", name, err)
	}
	v := 0
	if persist {
		v = 1
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, v); err != nil {
		return fmt.Errorf("tap %s: TUNSETPERSIST %d: %w", name, v, err)
	}
	return nil
}
