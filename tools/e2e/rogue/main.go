// Command rogue is a hostile vhost-user frontend: the peer a VMM taken over
// by its guest could become. The e2e suite (tools/e2e TestHostilePeer)
// builds it, puts it into the appliance and runs it as the hyperroot.run
// job against a switch port while two guests stream TCP through the same
// switch; the product image does not carry it.
//
//	rogue <socket> <mac>
//
// Once it reads "go" on its standard input (the console's "@run go"), it
// plays every attack of attacks on the port's socket, round after round,
// until it reads "stop", then prints its totals and exits 0 if the switch answered
// every attack as it must (cut the connection off, refuse the request, or
// serve on unharmed), else 1. Its lines:
//
//	rogue: round <n> ok                           a round went as expected
//	rogue: <attack>: <what happened instead>      a round did not
//	rogue: done rounds=<n> connections=<n> cut_off=<n> refused=<n> frames=<n>
//
// cut_off is how many connections the switch ended for the peer's fault,
// which the switch's own count (its port report's cutoffs=) must equal.
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/net/vhostuser"
	"github.com/hyperroot/hyperroot/vmm/virtio"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// answerWait bounds the wait for the switch's answer to one attack. It is
// not a pass condition tuned to a machine: a switch that has not answered
// a single request in this long under any emulator is hung, and the stream
// beside it would show that too.
const answerWait = time.Minute

// outcome is how the switch must answer an attack.
type outcome int

const (
	cutOff  outcome = iota // it ends the connection: descriptors of the wrong kind, framing it cannot trust
	refused                // it refuses the request (REPLY_ACK failure) and serves on
	served                 // it serves a valid session whatever the session sends
)

// attack is one thing a hostile frontend does on a fresh connection.
type attack struct {
	name string
	want outcome
	do   func(r *rogue, c *session) error
}

var attacks = []attack{
	{"call-pipe", cutOff, func(r *rogue, c *session) error {
		// A pipe nobody reads, where the receive call eventfd belongs:
		// once full it would block every sender delivering to the port.
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			return err
		}
		defer unix.Close(p[0])
		defer unix.Close(p[1])
		return c.fe.SetVringCall(0, p[1])
	}},
	{"kick-devzero", cutOff, func(r *rogue, c *session) error {
		// Always readable: a transmit worker polling it would spin.
		fd, err := unix.Open("/dev/zero", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return c.fe.SetVringKick(1, fd)
	}},
	{"mem-unsealed", cutOff, func(r *rogue, c *session) error {
		// Memory the peer could shrink under the switch's mapping later
		// (SIGBUS in the switch).
		fd, err := memfd(1<<20, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return c.fe.SetMemTable([]vhostuser.Region{{Size: 1 << 20, UserAddr: userBase, Fd: fd}})
	}},
	{"oversize", cutOff, func(r *rogue, c *session) error {
		// A header announcing more payload than any message has: the
		// stream's framing cannot be trusted after it.
		return c.raw(uint32(vhostuser.SetOwner), 1, vhostuser.MaxPayload+1, nil, nil)
	}},
	{"bad-version", cutOff, func(r *rogue, c *session) error {
		return c.raw(uint32(vhostuser.GetFeatures), 2, 0, nil, nil)
	}},
	{"mem-beyond-file", refused, func(r *rogue, c *session) error {
		// Sealed, but smaller than the region: mapped, its tail would
		// raise SIGBUS.
		fd, err := memfd(64<<10, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return c.fe.SetMemTable([]vhostuser.Region{{Size: 1 << 20, UserAddr: userBase, Fd: fd}})
	}},
	{"queue-huge", refused, func(r *rogue, c *session) error {
		// 32768 descriptors: megabytes of chain bookkeeping per port.
		return c.fe.SetVringNum(1, 32768)
	}},
	{"hostile-session", served, (*rogue).hostileSession},
	{"reconnect-storm", served, (*rogue).storm},
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: rogue <socket> <mac>")
		os.Exit(2)
	}
	mac, err := net.ParseMAC(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "rogue:", err)
		os.Exit(2)
	}
	r := &rogue{path: os.Args[1], mac: mac}
	// "go" starts the rounds: the port's own VMM must have left it first
	// (the port serves one frontend at a time, and a booting guest's VMM
	// holds it for as long as its boot takes). "stop" ends them.
	var stop atomic.Bool
	start := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		started := false
		for sc.Scan() {
			switch strings.TrimSpace(sc.Text()) {
			case "go":
				if !started {
					started = true
					close(start)
				}
			case "stop":
				stop.Store(true)
				if !started {
					close(start)
				}
				return
			}
		}
		stop.Store(true)
		if !started {
			close(start)
		}
	}()
	<-start
	fmt.Println("rogue: go")
	rounds, failed := 0, false
	for !stop.Load() {
		rounds++
		ok := true
		for _, a := range attacks {
			if err := r.play(a); err != nil {
				fmt.Printf("rogue: round %d: %s: %v\n", rounds, a.name, err)
				ok = false
			}
		}
		if ok {
			fmt.Printf("rogue: round %d ok\n", rounds)
		}
		failed = failed || !ok
	}
	fmt.Printf("rogue: done rounds=%d connections=%d cut_off=%d refused=%d frames=%d\n",
		rounds, r.conns, r.cut, r.refused, r.frames)
	if failed {
		os.Exit(1)
	}
}

// rogue keeps the totals of what it did.
type rogue struct {
	path string
	mac  net.HardwareAddr

	conns, cut, refused, frames int
}

// session is one connection to the port.
type session struct {
	uc *net.UnixConn
	fe *vhostuser.Frontend
}

// dial connects and negotiates what every attack starts from: features
// (with the protocol bit), REPLY_ACK and ownership, as a VMM does.
func (r *rogue) dial() (*session, error) {
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: r.path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	r.conns++
	c := &session{uc: uc, fe: vhostuser.NewFrontend(uc)}
	c.fe.Timeout = answerWait
	if err := c.handshake(); err != nil {
		uc.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	return c, nil
}

func (c *session) handshake() error {
	features, err := c.fe.GetFeatures()
	if err != nil {
		return err
	}
	if features&vhostuser.FeatureProtocolFeatures == 0 {
		return errors.New("the switch offers no protocol features")
	}
	if err := c.fe.SetProtocolFeatures(vhostuser.ProtocolReplyAck); err != nil {
		return err
	}
	return c.fe.SetOwner()
}

// play runs one attack on a fresh connection and checks the switch's
// answer.
func (r *rogue) play(a attack) error {
	if a.want == served {
		return a.do(r, nil)
	}
	c, err := r.dial()
	if err != nil {
		return err
	}
	defer c.uc.Close()
	err = a.do(r, c)
	switch a.want {
	case cutOff:
		if herr := c.waitHangUp(); herr != nil {
			return fmt.Errorf("not cut off (the request returned %v): %w", err, herr)
		}
		r.cut++
	case refused:
		if !errors.Is(err, vhostuser.ErrRefused) {
			return fmt.Errorf("want the request refused, got %v", err)
		}
		// ... and the connection still serves.
		if _, err := c.fe.GetFeatures(); err != nil {
			return fmt.Errorf("refused, but the connection no longer serves: %w", err)
		}
		r.refused++
	}
	return nil
}

// waitHangUp reads until the switch closes the connection; it returns an
// error if it does not within answerWait.
func (c *session) waitHangUp() error {
	c.uc.SetReadDeadline(time.Now().Add(answerWait))
	var b [256]byte
	for {
		_, err := c.uc.Read(b[:])
		switch {
		case err == nil:
			continue // an error ack before the hang-up
		case errors.Is(err, os.ErrDeadlineExceeded):
			return fmt.Errorf("still connected after %s", answerWait)
		default:
			return nil // EOF or reset: cut off
		}
	}
}

// raw sends a message with any header the attack wants.
func (c *session) raw(req, version, size uint32, payload []byte, fds []int) error {
	var h [vhostuser.HeaderSize]byte
	binary.LittleEndian.PutUint32(h[0:], req)
	binary.LittleEndian.PutUint32(h[4:], version)
	binary.LittleEndian.PutUint32(h[8:], size)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err := c.uc.WriteMsgUnix(append(h[:], payload...), oob, nil)
	return err
}

// memfd makes a memory file of size bytes with the given seals.
func memfd(size int64, seals int) (int, error) {
	fd, err := unix.MemfdCreate("rogue", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, err
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if seals != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}

// userBase is where the rogue claims its memory is mapped; the switch
// only uses it to translate ring addresses.
const userBase = 0x7f0000000000

// storm connects and hangs up at once, again and again: the port must
// serve on (paced), and the switch's console must not repeat itself for
// each connection.
func (r *rogue) storm(*session) error {
	for range 10 {
		uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: r.path, Net: "unix"})
		if err != nil {
			return err
		}
		r.conns++
		uc.Close()
	}
	// The port still negotiates.
	c, err := r.dial()
	if err != nil {
		return fmt.Errorf("after the storm: %w", err)
	}
	c.uc.Close()
	return nil
}

// Ring layout of the hostile session in its memory: the receive ring, the
// transmit ring, then buffers.
const (
	ringSize = 64
	memSize  = 1 << 20
	rxRing   = 0
	txRing   = 8 << 10
	bufBase  = 64 << 10
	bufSize  = 2048
)

// hostileSession is a valid session whose content is hostile: its receive
// call eventfd is left blocking with a saturated counter (a blocking
// write to it would hang every sender delivering to the port), its
// receive ring is full of buffers it never reaps, and it transmits frames
// port security must drop and then a broken descriptor chain. The switch
// must take every frame (so the transmit ring's used index advances past
// the valid chains), and go on serving the other ports.
func (r *rogue) hostileSession(*session) error {
	c, err := r.dial()
	if err != nil {
		return err
	}
	defer c.uc.Close()
	fd, err := memfd(memSize, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	mem, err := unix.Mmap(fd, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	defer unix.Munmap(mem)
	ram := virtiotest.WrapRAM(virtiotest.Region{GPA: 0, Bytes: mem})

	if err := c.fe.SetFeatures(virtio.FeatureVersion1 | vhostuser.FeatureProtocolFeatures); err != nil {
		return err
	}
	if err := c.fe.SetMemTable([]vhostuser.Region{{Size: memSize, UserAddr: userBase, Fd: fd}}); err != nil {
		return err
	}
	var eventfds []int
	defer func() {
		for _, e := range eventfds {
			unix.Close(e)
		}
	}()
	eventfd := func() (int, error) {
		e, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err == nil {
			eventfds = append(eventfds, e)
		}
		return e, err
	}
	var rings [2]*virtiotest.Driver
	var kicks [2]int
	for q, base := range []uint64{rxRing, txRing} {
		l := virtiotest.Contiguous(base, ringSize)
		if rings[q], err = virtiotest.NewDriver(ram, l); err != nil {
			return err
		}
		kick, err := eventfd()
		if err != nil {
			return err
		}
		kicks[q] = kick
		call, err := eventfd()
		if err != nil {
			return err
		}
		if q == 0 {
			// Saturated: the next write of 1 would block a blocking writer.
			var full [8]byte
			binary.LittleEndian.PutUint64(full[:], 0xfffffffffffffffe)
			if _, err := unix.Write(call, full[:]); err != nil {
				return err
			}
		}
		steps := []func() error{
			func() error { return c.fe.SetVringNum(q, ringSize) },
			func() error { return c.fe.SetVringBase(q, 0) },
			func() error {
				return c.fe.SetVringAddr(vhostuser.VringAddr{Index: uint32(q),
					Desc: userBase + l.Desc, Avail: userBase + l.Avail, Used: userBase + l.Used})
			},
			func() error { return c.fe.SetVringCall(q, call) },
			func() error { return c.fe.SetVringKick(q, kick) },
			func() error { return c.fe.SetVringEnable(q, true) },
		}
		for _, s := range steps {
			if err := s(); err != nil {
				return fmt.Errorf("ring %d: %w", q, err)
			}
		}
		if q == 0 {
			// Receive buffers the rogue never reaps.
			for i := range ringSize {
				rings[0].Post(virtiotest.Buf{Addr: bufBase + uint64(i)*bufSize, Len: bufSize, Write: true})
			}
			unix.Write(kick, one[:])
		}
	}
	tx := rings[1]
	txBufs := uint64(bufBase + ringSize*bufSize)
	frames := hostileFrames(r.mac)
	for i, f := range frames {
		b, err := ram.Slice(txBufs+uint64(i)*bufSize, bufSize)
		if err != nil {
			return err
		}
		n := copy(b[vhostHeader:], f) // the virtio-net header stays zero
		tx.Post(virtiotest.Buf{Addr: txBufs + uint64(i)*bufSize, Len: uint32(vhostHeader + n)})
	}
	// Then a chain whose buffer lies outside the memory table: the switch
	// must stop this ring (counted malformed), not fault or spin.
	tx.Post(virtiotest.Buf{Addr: memSize + 4096, Len: 64})
	if _, err := unix.Write(kicks[1], one[:]); err != nil {
		return err
	}
	deadline := time.Now().Add(answerWait)
	for tx.UsedIdx() < uint16(len(frames)) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the switch took %d of %d hostile frames in %s", tx.UsedIdx(), len(frames), answerWait)
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.frames += len(frames)
	// Stop the rings as a VMM does before it goes; the switch must answer.
	for q := range 2 {
		if _, err := c.fe.GetVringBase(q); err != nil {
			return fmt.Errorf("stop ring %d: %w", q, err)
		}
	}
	return nil
}

var one = [8]byte{1}

// vhostHeader is struct virtio_net_hdr_v1's size (VERSION_1 negotiated).
const vhostHeader = 12
