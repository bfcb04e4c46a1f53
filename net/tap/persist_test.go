package tap

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/netnstest"
)

// TestPersistent: a persistent tap outlives the descriptor that made it
// and can be attached to by name; deleting it removes the device.
func TestPersistent(t *testing.T) {
	const flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	ns := netnstest.New(t)
	ns.Do(t, func() {
		if err := AddPersistent("hrptap0", flags); err != nil {
			t.Fatal(err)
		}
		if _, err := net.InterfaceByName("hrptap0"); err != nil {
			t.Fatalf("tap gone after its descriptor closed: %v", err)
		}
		if err := AddPersistent("hyperroot-tap-name", flags); err == nil {
			t.Error("a name longer than IFNAMSIZ-1 was accepted")
		}
		if err := DeletePersistent("hrptap0", flags); err != nil {
			t.Fatal(err)
		}
		if _, err := net.InterfaceByName("hrptap0"); err == nil {
			t.Error("tap still there after DeletePersistent")
		}
	})
}
