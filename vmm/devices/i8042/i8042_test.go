package i8042

import (
	"fmt"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/devices/internal/irqtest"
)

func status(d *Device) byte {
	var b [1]byte
	d.Read(offCmd, b[:])
	return b[0]
}

func data(d *Device) byte {
	var b [1]byte
	d.Read(offData, b[:])
	return b[0]
}

func cmd(d *Device, c byte, args ...byte) {
	d.Write(offCmd, []byte{c})
	for _, a := range args {
		d.Write(offData, []byte{a})
	}
}

// expect reads one byte the way Linux's i8042_command does: wait for OBF,
// then read data; want is the byte and the status bits beyond OBF that must
// be set (AUXDATA, TIMEOUT).
func expect(t *testing.T, d *Device, what string, want, stBits byte) {
	t.Helper()
	st := status(d)
	if st&stOBF == 0 {
		t.Fatalf("%s: status %#x, no output byte", what, st)
	}
	if st&(stAuxData|stTimeout) != stBits {
		t.Fatalf("%s: status %#x, want bits %#x", what, st, stBits)
	}
	if got := data(d); got != want {
		t.Fatalf("%s: read %#x, want %#x", what, got, want)
	}
}

func empty(t *testing.T, d *Device, what string) {
	t.Helper()
	if st := status(d); st&stOBF != 0 {
		t.Fatalf("%s: status %#x, output buffer not empty", what, st)
	}
}

// TestLinuxProbe replays drivers/input/serio/i8042.c's probe: flush,
// self-test, stable CTR reads, CTR write, AUX loop, AUX disable/enable as
// seen in the CTR, interface tests.
func TestLinuxProbe(t *testing.T) {
	d := New(Options{})
	empty(t, d, "flush")
	if st := status(d); st&stUnlock == 0 {
		t.Fatalf("status %#x: keylock active", st)
	}
	cmd(d, cmdSelfTest)
	expect(t, d, "self-test", selfTestOK, 0)
	cmd(d, cmdReadRAM)
	expect(t, d, "CTR", ctrDefault, 0)
	cmd(d, cmdReadRAM)
	expect(t, d, "CTR again", ctrDefault, 0)
	ctr := byte(ctrDefault|ctrKbdDis) &^ ctrKbdInt
	cmd(d, cmdWriteRAM, ctr)
	cmd(d, cmdReadRAM)
	expect(t, d, "CTR written", ctr, 0)
	empty(t, d, "flush after init")

	cmd(d, cmdWriteAuxOB, 0x5A)
	expect(t, d, "AUX loop", 0x5A, stAuxData)
	cmd(d, cmdAuxDisable)
	cmd(d, cmdReadRAM)
	if v := data(d); v&ctrAuxDis == 0 {
		t.Fatalf("CTR %#x after AUX disable", v)
	}
	cmd(d, cmdAuxEnable)
	cmd(d, cmdReadRAM)
	if v := data(d); v&ctrAuxDis != 0 {
		t.Fatalf("CTR %#x after AUX enable", v)
	}
	cmd(d, cmdKbdEnable)
	cmd(d, cmdReadRAM)
	if v := data(d); v&ctrKbdDis != 0 {
		t.Fatalf("CTR %#x after kbd enable", v)
	}
	cmd(d, cmdAuxTest)
	expect(t, d, "AUX interface test", 0x00, 0)
	cmd(d, cmdKbdTest)
	expect(t, d, "kbd interface test", 0x00, 0)

	// Absent devices answer with a timeout at once.
	d.Write(offData, []byte{0xF2}) // atkbd GETID
	expect(t, d, "keyboard", noDeviceErr, stTimeout)
	cmd(d, cmdWriteAux, 0xFF) // psmouse reset
	expect(t, d, "mouse", noDeviceErr, stAuxData|stTimeout)
	empty(t, d, "end")

	cmd(d, cmdA20On)
	if st := status(d); st&stCmd == 0 {
		t.Fatalf("status %#x: last write was a command", st)
	}
	d.Write(offData, []byte{0xED})
	if st := status(d); st&stCmd != 0 {
		t.Fatalf("status %#x: last write was data", st)
	}
}

func TestReset(t *testing.T) {
	tests := []struct {
		name  string
		write func(d *Device)
		want  int
	}{
		{"0xFE pulse", func(d *Device) { cmd(d, 0xFE) }, 1},
		{"0xF0 pulses all lines incl. reset", func(d *Device) { cmd(d, 0xF0) }, 1},
		{"0xFF pulses nothing", func(d *Device) { cmd(d, 0xFF) }, 0},
		{"output port bit 0 cleared", func(d *Device) { cmd(d, cmdWriteOut, 0xDE) }, 1},
		{"output port A20 write", func(d *Device) { cmd(d, cmdWriteOut, 0xDF) }, 0},
		{"0xFE as data is not a command", func(d *Device) { d.Write(offData, []byte{0xFE}) }, 0},
		{"wide write reaching the command port", func(d *Device) { d.Write(offCmd-1, []byte{0, 0xFE}) }, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := 0
			var d *Device
			d = New(Options{Reset: func() {
				n++
				status(d) // re-entering the device from the callback must not deadlock
			}})
			tt.write(d)
			if n != tt.want {
				t.Fatalf("reset called %d times, want %d", n, tt.want)
			}
		})
	}
	// Without a callback a reset request is ignored.
	New(Options{}).Write(offCmd, []byte{0xFE})
}

func TestInterrupts(t *testing.T) {
	var kbd, aux irqtest.Recorder
	d := New(Options{KbdIRQ: &kbd, AuxIRQ: &aux})
	// Interrupts masked in the CTR: no line moves.
	cmd(d, cmdWriteRAM, ctrSys)
	cmd(d, cmdSelfTest)
	data(d)
	if kbd.Rises()+aux.Rises() != 0 {
		t.Fatalf("interrupt with CTR interrupts off: kbd %v aux %v", kbd.History(), aux.History())
	}
	// Linux's AUX IRQ test: enable AUX interrupts, loop a byte.
	cmd(d, cmdWriteRAM, ctrSys|ctrAuxInt|ctrKbdInt)
	cmd(d, cmdWriteAuxOB, 0xA5)
	if !aux.Level() || kbd.Level() {
		t.Fatalf("after AUX loop: aux %v kbd %v", aux.Level(), kbd.Level())
	}
	data(d)
	if aux.Level() {
		t.Fatal("AUX line still high after the byte was read")
	}
	// Two queued keyboard bytes give two rising edges.
	cmd(d, cmdWriteKbdOB, 0x01)
	cmd(d, cmdWriteKbdOB, 0x02)
	data(d)
	if !kbd.Level() {
		t.Fatal("kbd line low with a byte still queued")
	}
	data(d)
	if got := fmt.Sprint(kbd.History()); got != "[true false true false]" {
		t.Fatalf("kbd line %s, want one edge per byte", got)
	}
	// A keyboard byte then an AUX byte: the lines follow the head byte.
	cmd(d, cmdWriteKbdOB, 0x03)
	cmd(d, cmdWriteAuxOB, 0x04)
	if !kbd.Level() || aux.Level() {
		t.Fatal("head byte is keyboard")
	}
	data(d)
	if kbd.Level() || !aux.Level() {
		t.Fatal("head byte is AUX")
	}
	data(d)
	if kbd.Level() || aux.Level() {
		t.Fatal("empty buffer, lines must be low")
	}
}

func TestUndecodedAndWide(t *testing.T) {
	d := New(Options{})
	cmd(d, cmdSelfTest)
	b := make([]byte, 8)
	d.Read(0, b) // data, 0x61-0x63, status, then beyond the device
	if b[0] != selfTestOK || b[1] != 0xFF || b[3] != 0xFF || b[4]&stOBF != 0 || b[5] != 0xFF || b[7] != 0xFF {
		t.Fatalf("wide read %#x", b)
	}
	d.Write(1, []byte{0xAA, 0xAA, 0xAA}) // 0x61-0x63 ignored
	empty(t, d, "undecoded writes")
	d.Read(^uint64(0), b)
	d.Write(1<<40, b)
}

func TestQueueBound(t *testing.T) {
	d := New(Options{})
	for range queueSize + 5 {
		cmd(d, cmdSelfTest)
	}
	n := 0
	for status(d)&stOBF != 0 {
		data(d)
		n++
	}
	if n != queueSize {
		t.Fatalf("read %d bytes, queue bound %d", n, queueSize)
	}
}
