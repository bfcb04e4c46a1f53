package e2e

import (
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestHostilePeer: a rogue vhost-user frontend (tools/e2e/rogue, the
// hyperroot.run job of a test overlay, not a VMM) attacks a switch port
// round after round while two guests stream TCP through the same switch:
// descriptors of the wrong kind (a pipe as call, /dev/zero as kick, an
// unsealed memfd), framing the switch cannot trust, memory beyond its
// file, a 32768-descriptor ring, a valid session with a saturated blocking
// call eventfd, frames port security must drop and a broken chain, and
// storms of connections. The stream must complete with matching checksums,
// every attack must be answered as it must be (cut off, refused, served),
// the switch must count exactly the cut-offs the rogue saw and every
// hostile frame under its reason, its console must not repeat itself for
// each connection, and it must never need a restart.
//
// The port belongs to a configured VM, "rogue", whose guest powers off at
// once: the test tells the rogue to start ("@run go") when that VM's VMM
// has exited and left the port.
func TestHostilePeer(t *testing.T) {
	parallel(t)
	overlay := t.TempDir()
	buildInto(t, filepath.Join(overlay, "rogue", "rogue"), "./rogue")
	const (
		bytes    = 40 << 20
		rogueMAC = "52:54:00:48:52:09"
	)
	// The switch's socket directory in the appliance (init's switchDir).
	sock := vmmcli.NICSocket("/run/hyperroot/switch", "rogue", 0)
	testbed(t, func(t testing.TB) {
		// The rogue hands the switch descriptors of devices (/dev/zero
		// as a kick): SELinux refuses the switch those at receipt, and
		// says so. Any other denial fails the test below.
		expectDenials(t)
		pr, pw := io.Pipe()
		defer pw.Close()
		cfg := netConfig(t, lanNet,
			netVM("server", "net-server", []string{"{network: lan}"}),
			// Limited, so the stream lasts seconds (about 17) whatever the
			// machine: the switch paces the rogue's connections (five a
			// second), so a round takes about four.
			netVM("client", "net-client", []string{"{network: lan, limits: {tx: 20M}}"}, fmt.Sprintf("hyperroot.netbytes=%d", bytes)),
			netVM("rogue", "off", []string{`{network: lan, mac: "` + rogueMAC + `"}`}))
		started := time.Now()
		m := start(t, qemu.Options{Config: cfg, Oneshot: true, Overlay: overlay, Stdin: pr,
			Append: "hyperroot.run=/rogue/rogue," + sock + "," + rogueMAC})
		// The port is the rogue's once its VM's VMM has gone.
		expect(t, m, `hyperroot: vm rogue exited code=0 reason=poweroff$`)
		fmt.Fprintln(pw, "@run go")
		// Both guests are done (in either order) once both VMMs exited.
		expect(t, m, `hyperroot: vm (client|server) exited `)
		expect(t, m, `hyperroot: vm (client|server) exited `)
		fmt.Fprintln(pw, "@run stop")
		r := m.Wait()
		elapsed := time.Since(started)
		lines := r.Lines
		rogueFD := regexp.MustCompile(`avc: denied \{ [a-z ]+ \} for pid=\d+ comm="hyperroot" path="/dev/\S+" .* scontext=system_u:system_r:hyperroot_switch_t:\S+ tcontext=system_u:object_r:device_t:s0 tclass=chr_file `)
		for _, l := range lines {
			if strings.Contains(l, "avc: denied") && !rogueFD.MatchString(l) {
				t.Errorf("SELinux denied something other than a device the rogue passed to the switch: %s", l)
			}
		}
		for _, l := range lines {
			if strings.HasPrefix(l, "run| rogue: round ") && !strings.HasSuffix(l, " ok") {
				t.Errorf("%s", l)
			}
		}
		mustPass(t, r)
		checkStream(t, lines, "client", "server", bytes)

		// The attacks ran while the stream did: a whole round between
		// the client's ping (just before it streams) and its report.
		during := 0
		streaming := false
		for _, l := range lines {
			switch {
			case strings.HasPrefix(l, "client| guest: net ping "):
				streaming = true
			case strings.HasPrefix(l, "client| guest: net sent "):
				streaming = false
			case streaming && strings.HasPrefix(l, "run| rogue: round "):
				during++
			}
		}
		if during == 0 {
			t.Error("no round of attacks completed while the client streamed")
		}

		// Never restarted.
		if n := strings.Count(strings.Join(lines, "\n"), "switch| ready "); n != 1 {
			t.Errorf("the switch became ready %d times, want once", n)
		}
		for _, l := range lines {
			if strings.Contains(l, "hyperroot: switch exited") && !strings.HasSuffix(l, " reason=poweroff") {
				t.Errorf("the switch ended before the power-off: %s", l)
			}
		}
		// It took every attack jailed and under its seccomp filter,
		// which none of them made it break.
		checkSwitchJailed(t, lines, 1, false)

		// The switch's count agrees with the rogue's.
		done := lineWith(lines, `^run\| rogue: done `)
		report := lineWith(lines, `^switch\| port rogue\.0 rx=`)
		t.Logf("%s\n%s\n%d rounds during the stream; appliance ran %s", done, report, during, elapsed.Round(time.Second))
		num := func(line, key string) int {
			n, err := strconv.Atoi(field([]string{line}, ``, key))
			if err != nil {
				t.Errorf("no %s= in %q", key, line)
			}
			return n
		}
		rounds := num(done, "rounds")
		if got, want := num(report, "cutoffs"), num(done, "cut_off"); got != want {
			t.Errorf("the switch counted %d cut-offs, the rogue was cut off %d times", got, want)
		}
		// Each round's hostile frames, each dropped under its reason
		// (frames.go): two spoof the IPv4 source (UDP and an ARP of
		// hardware type 6), one each the rest; the broken chain is the
		// one malformed.
		for reason, per := range map[string]int{"spoofed_mac": 1, "spoofed_ip": 2, "rogue_dhcp": 1,
			"bad_ethertype": 1, "rogue_ra": 1, "malformed": 1} {
			if got := num(report, reason); got != per*rounds {
				t.Errorf("%s=%d after %d rounds, want %d", reason, got, rounds, per*rounds)
			}
		}

		// The console did not repeat itself for each connection: at most
		// the burst per minute, and the rest counted.
		conns := 0
		for _, l := range lines {
			if regexp.MustCompile(`^switch\| port rogue\.0( connected| disconnected|: )`).MatchString(l) {
				conns++
			}
		}
		if limit := 10 * (int(elapsed/time.Minute) + 2); conns > limit {
			t.Errorf("%d connection lines for port rogue.0 in %s, want at most %d", conns, elapsed.Round(time.Second), limit)
		}
		if lineWith(lines, `^switch\| port rogue\.0: \d+ connection lines not shown`) == "" {
			t.Error("the switch did not say how many connection lines it left out")
		}
	})
}
