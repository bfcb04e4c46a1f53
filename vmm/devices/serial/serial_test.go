package serial

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/devices/internal/irqtest"
	"github.com/hyperroot/hyperroot/vmm/irq"
)

func in(d *Device, reg uint64) byte {
	var b [1]byte
	d.Read(reg, b[:])
	return b[0]
}

func out(d *Device, reg uint64, v byte) { d.Write(reg, []byte{v}) }

// step is one guest access: a write of val, or a read whose result is
// masked with mask and compared to val.
type step struct {
	write bool
	reg   uint64
	val   byte
	mask  byte
	what  string
}

func w(reg uint64, v byte) step { return step{write: true, reg: reg, val: v} }
func r(reg uint64, mask, v byte, what string) step {
	return step{reg: reg, val: v, mask: mask, what: what}
}

func run(t *testing.T, d *Device, steps []step) {
	t.Helper()
	for i, s := range steps {
		if s.write {
			out(d, s.reg, s.val)
			continue
		}
		if got := in(d, s.reg) & s.mask; got != s.val {
			t.Fatalf("step %d (%s): reg %d & %#x = %#02x, want %#02x", i, s.what, s.reg, s.mask, got, s.val)
		}
	}
}

// TestLinuxAutoconfig replays the register accesses of Linux 6.1's
// autoconfig() and autoconfig_16550a() and checks the answers that make the
// driver conclude "16550A".
func TestLinuxAutoconfig(t *testing.T) {
	d := New(Options{})
	run(t, d, []step{
		// Scratch test through IER: only the four interrupt bits exist.
		w(regIER, 0), r(regIER, 0x0F, 0x00, "IER cleared"),
		w(regIER, 0x0F), r(regIER, 0x0F, 0x0F, "IER all"),
		w(regIER, 0),
		// Loopback test: MCR = LOOP|OUT2|RTS -> MSR = DCD|CTS.
		w(regMCR, mcrLoop|mcrOUT2|mcrRTS), r(regMSR, 0xF0, msrDCD|msrCTS, "loopback MSR"),
		w(regMCR, 0),
		// No EFR: LCR=0xBF, write EFR(=FCR) 0, LCR=0, enable FIFO, IIR>>6 == 3.
		w(regLCR, 0xBF), w(regIIR, 0), w(regLCR, 0), w(regIIR, fcrEnable),
		r(regIIR, 0xC0, 0xC0, "FIFO enabled bits"),
		// autoconfig_16550a: reading "EFR" with LCR=0xBF/0x80 must not read 0.
		w(regLCR, 0xBF), r(regIIR, 0xFF, 0xC1, "EFR probe B"),
		w(regLCR, 0x80), r(regIIR, 0xFF, 0xC1, "EFR probe A"),
		// NS16550 probe: LCR=0xE0 "EXCR1" must not mirror MCR.LOOP.
		w(regLCR, 0), r(regMCR, 0xFF, 0, "MCR"), w(regLCR, 0xE0), r(regIIR, 0x10, 0, "EXCR1 no LOOP"),
		w(regLCR, 0), w(regMCR, mcrLoop), w(regLCR, 0xE0), r(regIIR, 0x10, 0, "EXCR1 still no LOOP"),
		w(regLCR, 0), w(regMCR, 0),
		// TI16750 probe: IIR bit 5 never set.
		w(regIIR, fcrEnable|0x20), r(regIIR, 0xE0, 0xC0, "no 64-byte FIFO"),
		w(regLCR, 0x80), w(regIIR, fcrEnable|0x20), r(regIIR, 0xE0, 0xC0, "no 64-byte FIFO with DLAB"),
		w(regLCR, 0),
		// Xscale UUE probe: IER bit 6 does not stick.
		w(regIER, 0x40), r(regIER, 0x40, 0, "no UUE"),
		// DLAB gives the divisor latch, which does not alias RBR/IER.
		w(regLCR, lcrDLAB), w(regData, 0x01), w(regIER, 0x02),
		r(regData, 0xFF, 0x01, "DLL"), r(regIER, 0xFF, 0x02, "DLM"),
		w(regLCR, 0x03), r(regLCR, 0xFF, 0x03, "LCR 8N1"), r(regIER, 0xFF, 0x00, "IER after DLAB"),
		// Scratch register.
		w(regSCR, 0xA5), r(regSCR, 0xFF, 0xA5, "SCR"),
		// Idle line: THR empty, transmitter empty, no data.
		r(regLSR, 0xFF, lsrTHRE|lsrTEMT, "LSR idle"),
		r(regMSR, 0xF0, msrDCD|msrDSR|msrCTS, "peer connected"),
	})
}

// TestTHREReassert replays serial8250_do_startup's THRE test: a 16550
// re-asserts THR empty each time ETBEI is enabled.
func TestTHREReassert(t *testing.T) {
	d := New(Options{})
	out(d, regIIR, fcrEnable)
	run(t, d, []step{
		w(regIER, ierTHRE), r(regLSR, lsrTEMT, lsrTEMT, "TEMT"), r(regIIR, 0x0F, iirTHRE, "iir1"),
		r(regIIR, 0x0F, iirNone, "acknowledged by IIR read"),
		w(regIER, 0), w(regIER, ierTHRE), r(regIIR, 0x0F, iirTHRE, "re-asserted"),
		w(regIER, 0), r(regIIR, 0x0F, iirNone, "disabled"),
	})
}

func TestInterruptLevel(t *testing.T) {
	tests := []struct {
		name  string
		mcr   byte
		steps func(d *Device)
		want  []bool
	}{
		{"THRE with OUT2", mcrOUT2, func(d *Device) {
			out(d, regIER, ierTHRE) // rise
			in(d, regIIR)           // acknowledge: fall
			out(d, regData, 'x')    // transmitted: rise
			out(d, regIER, 0)       // fall
		}, []bool{true, false, true, false}},
		{"no OUT2 no interrupt", mcrDTR | mcrRTS, func(d *Device) {
			out(d, regIER, ierTHRE)
			out(d, regData, 'x')
		}, nil},
		{"OUT2 set late releases pending", 0, func(d *Device) {
			out(d, regIER, ierTHRE)
			out(d, regMCR, mcrOUT2) // rise
			out(d, regMCR, 0)       // fall
		}, []bool{true, false}},
		{"loopback gates", mcrOUT2 | mcrLoop, func(d *Device) {
			out(d, regIER, ierTHRE|ierRDA)
			out(d, regData, 'x')
		}, nil},
		{"RX data until drained", mcrOUT2, func(d *Device) {
			out(d, regIER, ierRDA)
			d.Input([]byte("ab")) // rise
			in(d, regData)
			in(d, regData) // fall
		}, []bool{true, false}},
		{"overrun raises RLS until LSR read", mcrOUT2, func(d *Device) {
			out(d, regIER, ierRLS)
			d.Input(make([]byte, 9)) // backlog 8: one dropped, rise
			in(d, regLSR)            // fall
		}, []bool{true, false}},
		{"modem status delta", mcrOUT2 | mcrLoop, func(d *Device) {
			out(d, regIER, ierMS)
			out(d, regMCR, mcrOUT2) // leave loopback: lines change, rise
			in(d, regMSR)           // fall
		}, []bool{true, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var line irqtest.Recorder
			d := New(Options{IRQ: &line, Backlog: 8})
			out(d, regMCR, tt.mcr)
			tt.steps(d)
			if got := line.History(); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("line history %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPriority(t *testing.T) {
	d := New(Options{Backlog: 4})
	out(d, regIIR, fcrEnable) // trigger level 1
	out(d, regMCR, mcrLoop)
	out(d, regIER, ierMask)
	out(d, regMCR, mcrRTS) // leave loopback: modem delta pending
	d.Input([]byte("12345"))
	run(t, d, []step{
		r(regIIR, 0x0F, iirRLS, "line status first"),
		r(regLSR, lsrOE|lsrDR, lsrOE|lsrDR, "overrun and data"),
		r(regIIR, 0x0F, iirRDA, "then data"),
		r(regData, 0xFF, '1', "1"), r(regData, 0xFF, '2', "2"), r(regData, 0xFF, '3', "3"), r(regData, 0xFF, '4', "4"),
		r(regIIR, 0x0F, iirTHRE, "then THR empty"),
		r(regIIR, 0x0F, iirMS, "then modem status"),
		r(regMSR, 0x0F, msrDCTS|msrDDSR|msrDDCD, "deltas"),
		r(regIIR, 0x0F, iirNone, "none left"),
	})
}

func TestOutput(t *testing.T) {
	var buf bytes.Buffer
	d := New(Options{Out: &buf})
	msg := "Linux version 6.1\r\n"
	for i := range len(msg) {
		out(d, regData, msg[i])
	}
	out(d, regMCR, mcrLoop)
	out(d, regData, '!') // looped back, not transmitted
	out(d, regMCR, 0)
	out(d, regLCR, lcrDLAB)
	out(d, regData, 0x0C) // divisor, not transmitted
	if buf.String() != msg {
		t.Fatalf("output %q, want %q", buf.String(), msg)
	}
	out(d, regLCR, 0)
	if got := in(d, regData); got != '!' {
		t.Fatalf("loopback byte %q, want '!'", got)
	}
	// A 16-bit write at THR transmits the low byte and writes IER with the
	// high one, as the ISA bus would split it.
	d.Write(regData, []byte{'Z', ierRDA})
	if !bytes.HasSuffix(buf.Bytes(), []byte("Z")) || in(d, regIER) != ierRDA {
		t.Fatalf("split write: output %q IER %#x", buf.String(), in(d, regIER))
	}
}

func TestInputOrderAndInterrupts(t *testing.T) {
	var line irqtest.Recorder
	d := New(Options{IRQ: &line})
	out(d, regIIR, fcrEnable|0x80) // trigger level 8
	out(d, regMCR, mcrOUT2)
	out(d, regIER, ierRDA)
	msg := []byte("the quick brown fox")
	if n := d.Input(msg); n != len(msg) {
		t.Fatalf("accepted %d of %d", n, len(msg))
	}
	if !line.Level() {
		t.Fatal("no RX interrupt")
	}
	var got []byte
	for in(d, regLSR)&lsrDR != 0 {
		id := in(d, regIIR) & 0x0F
		// At or above the trigger level: data available; below: timeout.
		want := byte(iirRDA)
		if left := len(msg) - len(got); min(left, fifoSize) < 8 {
			want = iirTimeout
		}
		if id != want {
			t.Fatalf("after %d bytes IIR %#x, want %#x", len(got), id, want)
		}
		got = append(got, in(d, regData))
	}
	if string(got) != string(msg) {
		t.Fatalf("read %q, want %q", got, msg)
	}
	if line.Level() {
		t.Fatal("interrupt still asserted with the FIFO empty")
	}
}

func TestFullBacklog(t *testing.T) {
	d := New(Options{Backlog: 32})
	in1 := bytes.Repeat([]byte{'a'}, 30)
	in2 := []byte("bcdef")
	if n := d.Input(in1); n != 30 {
		t.Fatalf("accepted %d, want 30", n)
	}
	if n := d.Input(in2); n != 2 {
		t.Fatalf("accepted %d, want 2", n)
	}
	if got := d.Dropped(); got != 3 {
		t.Fatalf("dropped %d, want 3", got)
	}
	if lsr := in(d, regLSR); lsr&lsrOE == 0 {
		t.Fatalf("LSR %#x: no overrun reported", lsr)
	}
	if lsr := in(d, regLSR); lsr&lsrOE != 0 {
		t.Fatalf("LSR %#x: overrun not cleared by reading", lsr)
	}
	// An FCR receive clear discards one FIFO's worth; the rest follows.
	out(d, regIIR, fcrEnable|fcrClearRX)
	var got []byte
	for in(d, regLSR)&lsrDR != 0 {
		got = append(got, in(d, regData))
	}
	if want := string(bytes.Repeat([]byte{'a'}, 14)) + "bc"; string(got) != want {
		t.Fatalf("after clear read %q, want %q", got, want)
	}
}

func TestOutOfRangeAccess(t *testing.T) {
	d := New(Options{})
	buf := []byte{1, 2, 3, 4}
	d.Read(6, buf) // MSR, SCR, then two bytes past the UART
	if buf[2] != 0xFF || buf[3] != 0xFF {
		t.Fatalf("bytes past the UART read %#x", buf)
	}
	d.Read(1<<63, buf)
	d.Write(^uint64(0), buf)
}

// TestConcurrent runs a transmitting vCPU, a receiving vCPU and an input
// goroutine at once (meaningful under -race) and checks nothing is lost or
// reordered.
func TestConcurrent(t *testing.T) {
	var line irqtest.Recorder
	var sink bytes.Buffer
	d := New(Options{Out: &sink, IRQ: &line, Backlog: 1 << 16})
	out(d, regMCR, mcrOUT2)
	out(d, regIER, ierRDA|ierTHRE)
	const n = 5000
	want := make([]byte, n)
	for i := range want {
		want[i] = byte(i * 7)
	}
	var wg sync.WaitGroup
	wg.Go(func() { // transmitter
		for _, b := range want {
			out(d, regData, b)
		}
	})
	wg.Go(func() { // host input, in small chunks
		for i := 0; i < n; i += 10 {
			d.Input(want[i:min(i+10, n)])
		}
	})
	var got []byte
	wg.Go(func() { // receiver
		for len(got) < n {
			if in(d, regLSR)&lsrDR != 0 {
				in(d, regIIR)
				got = append(got, in(d, regData))
			}
		}
	})
	wg.Wait()
	if !bytes.Equal(got, want) {
		t.Fatal("received bytes differ from input")
	}
	if !bytes.Equal(sink.Bytes(), want) {
		t.Fatal("transmitted bytes differ")
	}
	if d.Dropped() != 0 {
		t.Fatalf("dropped %d", d.Dropped())
	}
}

func BenchmarkTHRWrite(b *testing.B) {
	var line irqtest.Recorder
	d := New(Options{Out: io.Discard, IRQ: &line})
	out(d, regMCR, mcrOUT2)
	out(d, regIER, ierTHRE)
	data := []byte{'x'}
	b.ReportAllocs()
	for b.Loop() {
		d.Write(regData, data)
	}
}

// TestState: a dump's view of the UART says what the guest has not read
// (and what came and what a FIFO clear discarded),
// the interrupt it signals and the line's level, asked and driven.
func TestState(t *testing.T) {
	var line irqtest.Recorder
	d := New(Options{IRQ: &line})
	if got, want := d.State(), "rx-queued=0 received=0 cleared=0 dropped=0 ier=0x0 iid=0x1 lcr=0x0 mcr=0x0 fcr=0x0 lsr-errors=0x0 irq want=false driven=false"; got != want {
		t.Errorf("at power-on: %q, want %q", got, want)
	}
	out(d, regMCR, mcrOUT2)
	out(d, regIER, ierRDA)
	d.Input([]byte("abc"))
	if got, want := d.State(), "rx-queued=3 received=3 cleared=0 dropped=0 ier=0x1 iid=0x4 lcr=0x0 mcr=0x8 fcr=0x0 lsr-errors=0x0 irq want=true driven=true"; got != want {
		t.Errorf("with input: %q, want %q", got, want)
	}
	// A driver opening the port clears the FIFO: the dump tells input
	// that came and was discarded from input that never came.
	out(d, regIIR, fcrEnable|fcrClearRX)
	d.Input([]byte("de"))
	if got, want := d.State(), "rx-queued=2 received=5 cleared=3 dropped=0 ier=0x1 iid=0x4 lcr=0x0 mcr=0x8 fcr=0x1 lsr-errors=0x0 irq want=true driven=true"; got != want {
		t.Errorf("after a FIFO clear: %q, want %q", got, want)
	}
}

// TestEdgeTriggeredPort drives the UART as Linux's 8250 driver does
// behind an edge-triggered IOAPIC pin (the PC's IRQ 4), with a tty that
// echoes what it receives: on each rising edge the guest's handler reads
// IIR until it says "no interrupt", draining RBR on a receive interrupt and
// writing up to a FIFO of echo bytes per THR-empty interrupt (turning ETBEI
// off when it has nothing left); after the handler the tty takes what it
// received and, with echo owed and ETBEI off, turns ETBEI on as start_tx
// does. Meanwhile the host queues input, and the goroutine that
// drives the line is sometimes slow to come back from raising it (a
// KVM_IRQ_LINE on a preempted thread). Every byte must arrive and be
// echoed: a guest that read "no interrupt" saw the line low, so whatever
// the device wants after that read must come with a new rising edge even
// if the line was never driven low in between (the lost edge that left a
// guest idle with 1188 bytes queued for it, TestCtlRemote in CI).
func TestEdgeTriggeredPort(t *testing.T) {
	edge := make(chan struct{}, 1) // the IOAPIC's pending bit
	high := false                  // Set is never concurrent (pin.Pin)
	var slow atomic.Bool
	var handled, overlaps, spin atomic.Int64
	pause := func(n int) {
		for range n {
			spin.Add(1)
		}
	}
	line := irq.Func(func(level bool) error {
		rise := level && !high
		high = level
		if rise {
			select {
			case edge <- struct{}{}:
			default:
			}
			if slow.Load() {
				n := handled.Load()
				pause(2000) // the guest runs its handler meanwhile
				if handled.Load() != n {
					overlaps.Add(1)
				}
			}
		}
		return nil
	})
	var echoed bytes.Buffer
	d := New(Options{Out: &echoed, IRQ: line, Backlog: 1 << 20})
	out(d, regIIR, fcrEnable) // FCR
	out(d, regMCR, mcrOUT2)
	out(d, regIER, ierRDA)

	const lines, size = 5000, 10
	done := make(chan struct{})
	go func() { // the host: one console line at a time
		defer close(done)
		b := make([]byte, size)
		for i := range lines {
			slow.Store(i%3 == 0)
			for p := b; len(p) > 0; p = p[d.Input(p):] {
			}
			pause(i % 64 * 256) // so that the guest often catches up
		}
	}()
	got, fresh, owed := 0, 0, 0 // received, not yet echoed, echo owed
	ier := byte(ierRDA)
	handler := func() {
		handled.Add(1)
		for {
			switch in(d, regIIR) &^ iirFIFOBits {
			case iirNone:
				return
			case iirRDA, iirTimeout:
				for in(d, regLSR)&lsrDR != 0 {
					in(d, regData)
					got++
					fresh++
				}
			case iirTHRE:
				if owed == 0 {
					ier &^= ierTHRE
					out(d, regIER, ier)
					continue
				}
				for n := min(owed, fifoSize); n > 0; n-- {
					out(d, regData, 'x')
					owed--
				}
			}
		}
	}
	startTX := func() { // later, the tty echoes what the handler received
		owed, fresh = owed+fresh, 0
		if owed > 0 && ier&ierTHRE == 0 {
			ier |= ierTHRE
			out(d, regIER, ier)
		}
	}
	for waiting := true; waiting; {
		select {
		case <-edge:
			handler()
			startTX()
		case <-done:
			// Input has returned, so every edge it made is pending.
			select {
			case <-edge:
				handler()
				startTX()
			default:
				waiting = false
			}
		}
	}
	// The race needs the guest's handler to run while the line is being
	// raised; a run with no such overlap proves little.
	t.Logf("%d interrupts, %d of them while the line was being raised", handled.Load(), overlaps.Load())
	if got != lines*size || echoed.Len() != got {
		t.Fatalf("the guest received %d of %d bytes and echoed %d in %d interrupts; the UART: %s",
			got, lines*size, echoed.Len(), handled.Load(), d.State())
	}
}
