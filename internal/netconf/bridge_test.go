package netconf

import (
	"net"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/internal/netnstest"
)

// TestBridge makes a bridge with a veth end as its port in a throwaway
// namespace, checks what the kernel shows, and deletes it again.
func TestBridge(t *testing.T) {
	ns := netnstest.New(t)
	ns.Veth(t, "hrv0", "hrv1")
	ns.Do(t, func() {
		if err := AddBridge("hrbr0"); err != nil {
			t.Fatal(err)
		}
		if err := AddBridgePort("hrbr0", "hrv0"); err != nil {
			t.Fatal(err)
		}
		ifi, err := net.InterfaceByName("hrbr0")
		if err != nil || ifi.Flags&net.FlagUp == 0 {
			t.Fatalf("bridge %+v, %v: want it up", ifi, err)
		}
		for _, tc := range []struct {
			name string
			err  func() error
			want string
		}{
			{"port that does not exist", func() error { return AddBridgePort("hrbr0", "nosuch0") }, "port nosuch0"},
			{"name too long", func() error { return AddBridge("hyperroot-bridge-0") }, "name longer than 15 bytes"},
			{"bridge twice", func() error { return AddBridge("hrbr0") }, "SIOCBRADDBR"},
		} {
			if err := tc.err(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
			}
		}
		if err := DeleteBridge("hrbr0"); err != nil {
			t.Fatal(err)
		}
		if _, err := net.InterfaceByName("hrbr0"); err == nil {
			t.Error("bridge still there after DeleteBridge")
		}
	})
}
