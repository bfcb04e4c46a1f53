package powerkey

import (
	"encoding/binary"
	"testing"
)

func inputEvent(typ, code uint16, value int32) []byte {
	ev := make([]byte, eventSize)
	binary.LittleEndian.PutUint16(ev[16:], typ)
	binary.LittleEndian.PutUint16(ev[18:], code)
	binary.LittleEndian.PutUint32(ev[20:], uint32(value))
	return ev
}

func TestIsPress(t *testing.T) {
	for _, tc := range []struct {
		ev   []byte
		want bool
	}{
		{inputEvent(evKey, keyPower, 1), true},
		{inputEvent(evKey, keyPower, 0), false}, // release
		{inputEvent(evKey, keyPower, 2), false}, // autorepeat
		{inputEvent(evKey, 28, 1), false},       // enter
		{inputEvent(0, keyPower, 1), false},     // EV_SYN
		{inputEvent(evKey, keyPower, 1)[:20], false},
	} {
		if got := IsPress(tc.ev); got != tc.want {
			t.Errorf("IsPress(% x) = %v", tc.ev, got)
		}
	}
}
